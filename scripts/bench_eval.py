"""Benchmark: `chainforge eval` with the sampling engine against the previous decode loop, in one run.

    python -u scripts/bench_eval.py                                  # base SmolLM2, the learn recipe's eval
    python -u scripts/bench_eval.py --model runs/learn/01-sft-cold    # a checkpoint (longer completions)
    python -u scripts/bench_eval.py --rounds 2 --limit 50            # quicker, interleaved twice

Runs the real stage (`chainforge eval` on the first 200 questions of data/toy-2digit/test.jsonl, 2
samples per question, 144 tokens, temperature 0.6, top-p 0.95: the learn recipe's `eval` mapping) once per setting and
round, alternating the settings so that both see the same machine load:

  before     sampling/reference.py (the loop the engine had before, CHAINFORGE_SAMPLER=reference) with
             libgomp's default spin-wait (GOMP_SPINCOUNT=300000): what the code did before
  reference  the same loop, OpenMP threads not spinning (GOMP_SPINCOUNT=1000)
  engine     the engine (sampling/hf.py), libgomp's default spin-wait
  unpacked   the engine, with the command's own OpenMP default (spin-wait off when the machine is
             busy: chainforge.cli._openmp_wait), linear weights not laid out once
             (CHAINFORGE_PACKED_LINEAR=0: the engine as it was until 2026-12-06)
  packed     + every linear weight laid out for oneDNN once per call (sampling/packed.py; the same
             numbers, so the same samples as unpacked): the engine until 2026-12-07 07:00
  after      the engine with its defaults: + every decode step hands SDPA its mask (sampling/hf.py
             `_keep_decode_mask`; before, a step with no column masked, as at an eval's start when
             every prompt has one length, let transformers drop the mask and run SDPA's slower
             unmasked grouped-query path)

(`--settings before,after` for the two ends only.)

and prints per run the process wall time (Python start to exit), the sampling time, generated
tokens per second of sampling, the process's peak RSS, pass@1, and the decode rate as a fraction
of the roofline bound at the batch size used (scripts/bench_roofline.py). The two settings draw
different samples from the same seed (they spend each row's generator differently); pass@1 and the
mean completion length show that they draw from the same distribution.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {
    "before": {"CHAINFORGE_SAMPLER": "reference", "GOMP_SPINCOUNT": "300000"},
    "reference": {"CHAINFORGE_SAMPLER": "reference", "GOMP_SPINCOUNT": "1000"},
    "engine": {"CHAINFORGE_SAMPLER": "engine", "GOMP_SPINCOUNT": "300000", "CF_BENCH": "dropped-mask"},
    "unpacked": {"CHAINFORGE_SAMPLER": "engine", "CHAINFORGE_PACKED_LINEAR": "0", "CF_BENCH": "dropped-mask"},
    "packed": {"CHAINFORGE_SAMPLER": "engine", "CF_BENCH": "dropped-mask"},
    "after": {"CHAINFORGE_SAMPLER": "engine"},
}
# `python -m chainforge`, with what CF_BENCH names put back as it was (for the rows before "after")
RUNNER = ("import os, sys\n"
          "if 'dropped-mask' in os.environ.get('CF_BENCH', '').split(','):\n"
          "    import chainforge.sampling.hf as hf\n"
          "    hf._keep_decode_mask = lambda *a: False\n"
          "from chainforge.cli import main\n"
          "sys.argv = ['chainforge'] + sys.argv[1:]\n"
          "main()\n")


def run_eval(model: str, data: str, out: Path, env: dict, limit: int | None, extra: list[str]) -> dict:
    cmd = [sys.executable, "-c", RUNNER, "eval", "--model", model, "--data", data, "--output", str(out),
           "--num-samples", "2", "--max-new-tokens", "144", "--temperature", "0.6", "--seed", "0", *extra]
    if limit:
        cmd += ["--limit", str(limit)]
    log = out.with_suffix(".log")
    started = time.perf_counter()
    with open(log, "w") as fh:
        base = {k: v for k, v in os.environ.items()
                if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "CHAINFORGE_PACKED_LINEAR", "CF_BENCH")}
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**base, **env}, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own peak RSS (ru_maxrss, KiB)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    output = log.read_text()
    if proc.returncode != 0:
        sys.exit(f"exit {proc.returncode}:\n{output[-3000:]}")
    sampled = re.search(r"sampled (\d+) completions in ([\d.]+) s", output)
    if not sampled:  # the rates below are per completion the eval counted: without the line there are none
        sys.exit(f"no 'sampled N completions in S s' line in the eval's output:\n{output[-3000:]}")
    metrics = json.loads((out / "chainforge.json").read_text())["metrics"]
    return {"wall": wall, "sampling": float(sampled.group(2)), "completions": int(sampled.group(1)),
            "metrics": metrics, "rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--data", default=str(ROOT / "data/toy-2digit/test.jsonl"))
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--limit", type=int, default=200,
                    help="questions (default 200, the first 200 of test.jsonl's 400: the 200 x 2 eval; 0 = all)")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset of " + ", ".join(SETTINGS))
    args, extra = ap.parse_known_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from chainforge.cli import _openmp_wait

    _openmp_wait()  # this process measures the machine as the command runs (before torch loads)
    from bench_roofline import decode_bound, machine

    m = machine()
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, load average "
          f"{open('/proc/loadavg').read().split()[0]}; model {args.model}; {m.line()}", flush=True)
    results: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name in args.settings.split(","):
                res = run_eval(args.model, args.data, Path(tmp) / f"{name}-{r}", SETTINGS[name], args.limit, extra)
                mt = res["metrics"]
                tokens = mt["mean_completion_tokens"] * res["completions"]  # as the eval counted them
                rate = tokens / res["sampling"]
                # the bound at a full batch of 64 rows, contexts of prompt (~105) + half the completion
                bound = decode_bound(64, 105 + int(mt["mean_completion_tokens"] / 2), m)
                res["tokens"] = tokens
                results.setdefault(name, []).append(res)
                print(f"{name:8s} round {r}: {res['completions']} completions, process {res['wall']:6.1f} s, "
                      f"sampling {res['sampling']:6.1f} s, "
                      f"{rate:5.0f} tokens/s = {rate / bound:.2f} of the decode bound ({bound:.0f}), "
                      f"peak RSS {res['rss_mb']:.0f} MB, "
                      f"pass@1 {mt['pass@1']:.3f}, mean tokens {mt['mean_completion_tokens']:.1f}, "
                      f"load {open('/proc/loadavg').read().split()[0]}", flush=True)
    first = next(iter(results))
    print(f"\nsetting     process  sampling  tokens/s  speed-up vs {first} (sampling tokens/s)")
    rate = {name: sum(x["tokens"] for x in runs) / sum(x["sampling"] for x in runs) for name, runs in results.items()}
    for name, runs in results.items():
        wall = sum(x["wall"] for x in runs) / len(runs)
        sampling = sum(x["sampling"] for x in runs) / len(runs)
        print(f"{name:10s} {wall:7.1f} s {sampling:7.1f} s {rate[name]:8.0f}  {rate[name] / rate[first]:5.2f}x")


if __name__ == "__main__":
    main()
