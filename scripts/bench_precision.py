"""Benchmark: what `--precision auto` buys on this machine, fp32 vs bf16, in one run.

    python scripts/bench_precision.py

Prints (1) one 2048×576×1536 matmul in GFLOPS, (2) a SmolLM2 forward+backward of 16 × 200 random
tokens (fp32 weights; bf16 under autocast, as training runs it), (3) decoding 8 completions of
96 tokens for each of 4 prompts with the sampling engine from fp32 and from bf16 weights, and the
bf16/fp32 ratio of each. On a CPU without native bf16 (see chainforge.models.native_bf16) bf16 is
emulated, which is why auto picks fp32 there: on a 2-core Ice Lake Xeon (AVX512 without BF16,
2026-12-07) this script printed matmul fp32 249 / bf16 65 GFLOPS (0.26x), forward+backward fp32
19.5 s / bf16 autocast 51.4 s (0.38x), engine decoding fp32 111 / bf16 91 tokens/s (0.81x).
"""

from __future__ import annotations

import time


def main() -> None:
    import torch

    from chainforge.models import load_model, load_tokenizer, native_bf16, resolve_model
    from chainforge.sampling import generate

    print(f"# {time.strftime('%Y-%m-%d')}, torch threads {torch.get_num_threads()}, native bf16: {native_bf16('cpu')}")
    torch.manual_seed(0)
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(2048, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
        for _ in range(3):
            a @ b
        started, n = time.perf_counter(), 50
        for _ in range(n):
            a @ b
        rates[dtype] = 2 * 2048 * 576 * 1536 * n / (time.perf_counter() - started) / 1e9
    print(f"matmul GFLOPS: fp32 {rates[torch.float32]:.0f}, bf16 {rates[torch.bfloat16]:.0f} "
          f"({rates[torch.bfloat16] / rates[torch.float32]:.2f}x)")

    ref = resolve_model("smollm2")
    model, tok = load_model(ref), load_tokenizer(ref)
    ids = torch.randint(0, len(tok) - 1, (16, 200))
    times = {}
    for autocast in (False, True, False, True):  # the first pair warms up
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=ids).logits
            loss = torch.log_softmax(logits.float(), -1).gather(-1, ids[..., None]).mean()
        loss.backward()
        model.zero_grad()
        times[autocast] = time.perf_counter() - started
    print(f"forward+backward 16 x 200 tokens: fp32 {times[False]:.1f} s, bf16 autocast {times[True]:.1f} s "
          f"({times[False] / times[True]:.2f}x)")

    prompts = [f"What is {a} + {b}? Put the final answer in \\boxed{{}}." for a, b in [(12, 34), (56, 7), (81, 19), (45, 45)]]
    speed = {}
    for dtype in (torch.float32, torch.bfloat16):
        m = load_model(ref, dtype=dtype)
        started = time.perf_counter()
        out = generate(m, tok, prompts, n=8, temperature=1.0, max_new_tokens=96, seed=0)
        speed[dtype] = sum(c.tokens for comps in out for c in comps) / (time.perf_counter() - started)
    print(f"engine decoding tokens/s: fp32 {speed[torch.float32]:.0f}, bf16 {speed[torch.bfloat16]:.0f} "
          f"({speed[torch.bfloat16] / speed[torch.float32]:.2f}x)")


if __name__ == "__main__":
    main()
