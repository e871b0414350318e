"""Benchmark: candidates/s of the sampling engine against the two ways people usually sample.

    python scripts/bench_sampling.py                    # CPU, random-init SmolLM2-135M shape
    python scripts/bench_sampling.py --weights real     # the real SmolLM2-135M-Instruct weights
    python scripts/bench_sampling.py --device cuda --prompts 64 --samples 16 --new-tokens 256

Three ways to draw `--samples` completions for each of `--prompts` prompts, `--new-tokens` each:
  per-candidate  one `model.generate` call per candidate (the seed's way)
  per-prompt     one `model.generate` call per prompt with num_return_sequences=N
  engine         `chainforge.sampling.generate` (length-sorted batches, shared prefill, auto batch size)
With random weights EOS is rare, so every method decodes (nearly) the full length; the script
prints the mean tokens per candidate for each so the comparison is visibly like for like.
The per-candidate baseline is slow: by default it runs on the first `--baseline-prompts` prompts
only (candidates/s is a rate, so a subset measures it); pass `--baseline-prompts 0` for all.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--weights", choices=["random", "real"], default="random")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", default="auto", help="engine rows per batch, or auto")
    ap.add_argument("--baseline-prompts", type=int, default=4,
                    help="prompts used for the per-candidate baseline (0 = all)")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = ap.parse_args()

    from chainforge.cli import _openmp_wait

    _openmp_wait()  # as the command sets it, before torch loads (both methods run under it)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    from chainforge.models import checkpoint_path, load_tokenizer, resolve_model
    from chainforge.sampling import auto_batch_size, generate, render_prompt, stop_token_ids

    ref = resolve_model("smollm2")
    folder = checkpoint_path(ref)
    tok = load_tokenizer(ref)
    if args.weights == "real":
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    else:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.float32)
    model.to(args.device).eval()
    topics = ["a triangle", "prime numbers", "the moon", "fractions", "a bicycle", "photosynthesis",
              "the number seven", "an even square", "rainfall", "chess openings", "a leap year",
              "binary numbers", "the Nile", "a recipe for bread", "gravity", "a right angle"]
    prompts = [f"Explain {topics[i % len(topics)]} in one short paragraph" + " please" * (i % 5)
               for i in range(args.prompts)]
    n, new = args.samples, args.new_tokens
    stops = stop_token_ids(tok, model)
    encoded = [tok(render_prompt(tok, p), return_tensors="pt", add_special_tokens=False)["input_ids"].to(args.device)
               for p in prompts]
    sample_kw = dict(do_sample=True, temperature=args.temperature, top_p=1.0, top_k=0, max_new_tokens=new,
                     eos_token_id=stops, pad_token_id=tok.pad_token_id)
    print(f"model: SmolLM2-135M shape, {args.weights} weights, {args.device}, torch threads {torch.get_num_threads()}, "
          f"load average {open('/proc/loadavg').read().split()[0]}, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"work: {args.prompts} prompts x {n} samples x {new} new tokens")

    def timed(fn):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    # warm-up (allocator, kernels) so no method pays for it
    generate(model, tok, prompts[:2], n=2, temperature=args.temperature, max_new_tokens=4)

    base_prompts = encoded[:args.baseline_prompts] if args.baseline_prompts else encoded

    def per_candidate():
        lengths = []
        with torch.inference_mode():
            for ids in base_prompts:
                for _ in range(n):
                    out = model.generate(ids, attention_mask=torch.ones_like(ids), **sample_kw)
                    lengths.append(out.shape[1] - ids.shape[1])
        return lengths

    def per_prompt():
        lengths = []
        with torch.inference_mode():
            for ids in encoded:
                out = model.generate(ids, attention_mask=torch.ones_like(ids), num_return_sequences=n, **sample_kw)
                lengths += [out.shape[1] - ids.shape[1]] * n
        return lengths

    bs = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    chosen = auto_batch_size(model, max(e.shape[1] for e in encoded) + new) if bs == "auto" else bs

    def engine():
        comps = generate(model, tok, prompts, n=n, temperature=args.temperature, max_new_tokens=new,
                         batch_size=bs, seed=0)
        return [c.tokens for row in comps for c in row]

    results = {}
    for name, fn in (("per-candidate", per_candidate), ("per-prompt", per_prompt), ("engine", engine)):
        lengths, took = timed(fn)
        results[name] = len(lengths) / took
        print(f"{name:>14}: {len(lengths):4d} candidates in {took:7.2f} s = {results[name]:7.2f} candidates/s "
              f"(mean {sum(lengths) / len(lengths):.1f} tokens each)" + (f", batch size {chosen}" if name == "engine" else ""), flush=True)
    print(f"engine vs one call per candidate: {results['engine'] / results['per-candidate']:.1f}x")
    print(f"engine vs one call per prompt (num_return_sequences={n}): {results['engine'] / results['per-prompt']:.1f}x")


if __name__ == "__main__":
    main()
