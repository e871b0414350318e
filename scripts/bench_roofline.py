"""Benchmark: the machine's limits, the SmolLM2 bounds they imply, and how close the code gets.

    python -u scripts/bench_roofline.py                  # measure the machine, then decode and training
    python -u scripts/bench_roofline.py --machine-only   # matmul rates and bandwidth only
    python -u scripts/bench_roofline.py --threads        # OpenMP spin-wait and thread count, compared
    python -u scripts/bench_roofline.py --precision fp32 # bounds and code in fp32 (default: what auto picks)

1. The machine, measured: matmul rate in bf16 and fp32 (a 2048×576×1536 product, the shape of a
   SmolLM2 MLP projection over 2048 tokens) and memory bandwidth (reading a 1 GiB tensor; copying one).
2. The bounds for SmolLM2-135M (30 layers, hidden 576, 3 KV heads, 49,152-token tied LM head),
   roofline style: a step takes at least max(FLOPs / matmul rate, bytes / bandwidth), in the
   precision the stages compute in here (`--precision auto`: bf16 on a CPU with AVX512-BF16 or AMX,
   fp32 on one without, where bf16 is emulated and slower: chainforge.models.native_bf16); the
   byte counts below are bf16's, twice them in fp32.
   - decode at batch B with contexts of C tokens: 2 × 134.5M FLOPs per row (LM head included) plus
     attention (4 × 576 × C per layer), and one read of the bf16 weights (269 MB) plus the KV cache
     (23,040 bytes per token per row in bf16: B × C of them);
   - a forward+backward over N tokens: 3 × the forward FLOPs (weights' and inputs' gradients), at
     the bf16 rate (autocast runs the matmuls in bf16).
`--threads`: a decode-sized bf16 matmul (64×576×1536) and a training-sized one (2048×576×1536)
in fresh processes with 2 threads and libgomp's default spin-wait, 2 threads with
GOMP_SPINCOUNT=1000, and 1 thread, interleaved: on a machine that other processes keep busy the
spinning threads wait for each other (chainforge.cli._openmp_wait).
3. What the code reaches: the sampling engine's decode step (`sampling.hf.decode`, weights in that
   precision) at batch 1/16/64 with 200-token contexts, and a forward+backward of 8 × 512 tokens
   (the learn recipe's SFT batch; under bf16 autocast when the precision is bf16), each as a
   fraction of its bound.

Other benchmarks import `machine()`, `decode_bound()` and `train_bound()` to print their own
fraction of the limit (bench_eval.py, bench_grpo.py, bench_sft.py).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from functools import lru_cache

# SmolLM2-135M's shape (models/smollm2/config.json)
LAYERS, HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 30, 576, 1536, 9, 3, 64, 49152
LAYER_PARAMS = HIDDEN * HIDDEN * 2 + HIDDEN * KV_HEADS * HEAD_DIM * 2 + 3 * HIDDEN * INTERMEDIATE
MATMUL_PARAMS = LAYERS * LAYER_PARAMS + VOCAB * HIDDEN  # per token: every layer and the tied LM head
WEIGHT_BYTES_BF16 = 2 * (LAYERS * LAYER_PARAMS + VOCAB * HIDDEN)
KV_BYTES_PER_TOKEN = LAYERS * 2 * KV_HEADS * HEAD_DIM * 2  # keys and values, bf16: 23,040


@dataclass
class Machine:
    bf16_flops: float
    fp32_flops: float
    read_bytes_s: float
    copy_bytes_s: float

    def line(self) -> str:
        return (f"matmul bf16 {self.bf16_flops / 1e9:.0f} GFLOPS, fp32 {self.fp32_flops / 1e9:.0f} GFLOPS; memory "
                f"read {self.read_bytes_s / 1e9:.1f} GB/s, copy {self.copy_bytes_s / 1e9:.1f} GB/s (read + write)")


def _best(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


@lru_cache(maxsize=1)
def machine() -> Machine:
    """Best of a few runs of each (the machine may be shared: the best run is the closest to idle)."""
    import torch

    rates = {}
    for dtype in (torch.bfloat16, torch.float32):
        a, b = torch.randn(2048, HIDDEN, dtype=dtype), torch.randn(HIDDEN, INTERMEDIATE, dtype=dtype)
        took = _best(lambda: [a @ b for _ in range(10)], 5)
        rates[dtype] = 2 * 2048 * HIDDEN * INTERMEDIATE * 10 / took
    big = torch.ones(256 * 1024 * 1024, dtype=torch.float32)  # 1 GiB
    read = big.numel() * 4 / _best(lambda: big.sum(), 5)
    out = torch.empty_like(big)
    copy = 2 * big.numel() * 4 / _best(lambda: out.copy_(big), 5)
    del big, out
    return Machine(rates[torch.bfloat16], rates[torch.float32], read, copy)


def decode_flops(batch: int, context: int) -> float:
    return batch * (2 * MATMUL_PARAMS + LAYERS * 4 * HEADS * HEAD_DIM * context)


@lru_cache(maxsize=1)
def auto_precision() -> str:
    """What `--precision auto` computes in on this CPU: "bf16" or "fp32"."""
    from chainforge.models import precision_used

    return precision_used("auto", "cpu")


def _scale(precision: str | None) -> int:
    """Bytes per value relative to bf16 (1 in bf16, 2 in fp32); None: what auto picks here."""
    return 1 if (precision or auto_precision()) == "bf16" else 2


def _rate(m: Machine, precision: str | None) -> float:
    return m.bf16_flops if _scale(precision) == 1 else m.fp32_flops


def decode_bytes(batch: int, context: int, precision: str | None = None) -> float:
    """Weights and KV cache read by one decode step (bf16: 2 bytes a value; fp32: 4)."""
    return _scale(precision) * (WEIGHT_BYTES_BF16 + batch * context * KV_BYTES_PER_TOKEN)


def decode_bound(batch: int, context: int, m: Machine | None = None, precision: str | None = None) -> float:
    """Tokens/s a decode step of `batch` rows with `context`-token caches cannot exceed, in
    `precision` ("bf16" / "fp32"; default: what auto picks on this CPU)."""
    m = m or machine()
    step = max(decode_flops(batch, context) / _rate(m, precision),
               decode_bytes(batch, context, precision) / m.read_bytes_s)
    return batch / step


def train_flops(tokens: int, sequence: int) -> float:
    """Forward+backward FLOPs over `tokens` tokens in sequences of `sequence` (causal attention)."""
    forward = tokens * (2 * MATMUL_PARAMS + LAYERS * 4 * HEADS * HEAD_DIM * sequence / 2)
    return 3 * forward


def train_bound(sequence: int = 512, m: Machine | None = None, precision: str | None = None) -> float:
    """Trained tokens/s a forward+backward cannot exceed, its matmuls at `precision`'s rate (bf16:
    autocast; default: what auto picks on this CPU)."""
    m = m or machine()
    return _rate(m, precision) / (train_flops(1, sequence))


def _decode_rate(model, batch: int, context: int, steps: int = 24) -> float:
    """Tokens/s of the engine's decode step: `batch` slots holding `context`-token prompts."""
    import torch

    from chainforge.sampling import hf

    cache = hf._SlotCache(batch, context + steps + 1, "cpu")
    prompt = [list(range(100, 100 + context))]
    with torch.inference_mode():
        cache.admit(model, prompt, [0] * batch, list(range(batch)), 0)
        tokens = torch.full((batch,), 200, dtype=torch.long)
        positions = torch.full((batch,), context, dtype=torch.long)
        for _ in range(3):
            cache.step(model, tokens, positions)
        started = time.perf_counter()
        for _ in range(steps):
            logits = cache.step(model, tokens, positions)
            hf._pick(logits, torch.rand(batch, dtype=torch.float64), 1.0, 1.0)
        return batch * steps / (time.perf_counter() - started)


def _train_rate(model, rows: int = 8, sequence: int = 512, autocast: bool = True) -> float:
    import torch

    ids = torch.randint(0, VOCAB, (rows, sequence))
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, VOCAB), ids.view(-1))
        loss.backward()
        model.zero_grad(set_to_none=True)
        rates.append(rows * sequence / (time.perf_counter() - started))
    return max(rates[1:])


THREAD_PROBE = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
out = []
for m, reps in ((64, 300), (2048, 20)):
    x, w = torch.randn(m, 576, dtype=torch.bfloat16), torch.randn(1536, 576, dtype=torch.bfloat16)
    for _ in range(5):
        torch.nn.functional.linear(x, w)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(reps):
            torch.nn.functional.linear(x, w)
        best = min(best, (time.perf_counter() - started) / reps)
    out.append(best * 1e3)
print(" ".join(f"{t:.3f}" for t in out))
"""


def threads(rounds: int = 3) -> None:
    import subprocess
    import sys

    settings = {"2 threads, libgomp default spin": ("2", {"GOMP_SPINCOUNT": "300000"}),
                "2 threads, GOMP_SPINCOUNT=1000": ("2", {"GOMP_SPINCOUNT": "1000"}),
                "1 thread": ("1", {"GOMP_SPINCOUNT": "1000"})}
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    times: dict[str, list] = {name: [] for name in settings}
    for _ in range(rounds):
        for name, (n, env) in settings.items():
            out = subprocess.run([sys.executable, "-c", THREAD_PROBE, n], env={**base, **env}, capture_output=True,
                                 text=True, check=True).stdout.split()
            times[name].append([float(x) for x in out])
    print(f"\nbf16 matmul, best of {rounds} rounds (ms)   64×576×1536   2048×576×1536   load average "
          f"{open('/proc/loadavg').read().split()[0]}")
    for name, runs in times.items():
        small, big = min(r[0] for r in runs), min(r[1] for r in runs)
        print(f"{name:34s} {small:10.3f} {big:14.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--machine-only", action="store_true")
    ap.add_argument("--threads", action="store_true", help="compare OpenMP spin-wait settings and thread counts")
    ap.add_argument("--context", type=int, default=200)
    ap.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                    help="the precision of the bounds and of the code measured (auto: what the stages pick here)")
    args = ap.parse_args()
    if args.threads:
        threads()
        return
    from chainforge.cli import _openmp_wait

    _openmp_wait()  # the machine as the command sees it (set before torch loads)
    import torch

    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"load average {open('/proc/loadavg').read().split()[0]}", flush=True)
    m = machine()
    precision = auto_precision() if args.precision == "auto" else args.precision
    print(m.line(), flush=True)
    print(f"precision: {precision} ({'--precision auto' if args.precision == 'auto' else 'forced'}; native bf16 on "
          f"this CPU: {auto_precision() == 'bf16'})", flush=True)
    print(f"SmolLM2-135M: {MATMUL_PARAMS / 1e6:.1f}M matmul parameters per token (LM head included), "
          f"{_scale(precision) * WEIGHT_BYTES_BF16 / 1e6:.0f} MB of {precision} weights, KV cache "
          f"{_scale(precision) * KV_BYTES_PER_TOKEN} bytes per token per row")
    print(f"\n{'bound':34s} {'FLOPs':>9s} {'bytes':>9s} {'tokens/s':>9s}  limited by")
    for batch in (1, 16, 64):
        f, b = decode_flops(batch, args.context), decode_bytes(batch, args.context, precision)
        by = "compute" if f / _rate(m, precision) > b / m.read_bytes_s else "memory"
        print(f"decode, batch {batch:2d}, {args.context}-token context  {f / 1e9:7.1f} G {b / 1e6:7.0f} M "
              f"{decode_bound(batch, args.context, m, precision):9.0f}  {by}")
    print(f"forward+backward, 512-token rows     {train_flops(1, 512) / 1e9:7.2f} G per token "
          f"{train_bound(512, m, precision):11.0f}  compute")
    if args.machine_only:
        return

    from chainforge.models import load_model, load_tokenizer, resolve_model

    ref = resolve_model("smollm2")
    load_tokenizer(ref)
    model = load_model(ref, dtype=torch.bfloat16 if precision == "bf16" else torch.float32).eval()
    print(f"\n{'achieved':34s} {'tokens/s':>9s} {'bound':>9s} {'fraction':>9s}", flush=True)
    for batch in (1, 16, 64, 128):
        rate = _decode_rate(model, batch, args.context)
        bound = decode_bound(batch, args.context, m, precision)
        print(f"engine decode step, batch {batch:3d}      {rate:9.0f} {bound:9.0f} {rate / bound:9.2f}", flush=True)
    del model
    model = load_model(ref, dtype=torch.float32).train()
    rate = _train_rate(model, autocast=precision == "bf16")
    bound = train_bound(512, m, precision)
    print(f"forward+backward, 8 × 512 ({precision})  {rate:9.0f} {bound:9.0f} {rate / bound:9.2f}", flush=True)


if __name__ == "__main__":
    main()
