"""Benchmark: SFT in the learn recipe's setting, TRL's CPU step against ours, in one run.

    python -u scripts/bench_sft_step.py                  # 6 optimizer steps per setting
    python -u scripts/bench_sft_step.py --steps 10 --rounds 2

Runs the real `chainforge sft` stage with configs/learn.yaml's `sft-cold` options (SmolLM2,
data/toy-2digit/sft.jsonl, batch 8, max length 512, packing, --precision auto: bf16 autocast on
this CPU) once per setting and round, alternating:

  before   TRL's CPU step: its fused LM head over every position (fp32 gradient GEMMs), SDPA with
           the block-diagonal mask over the whole packed batch
  after    the stage's CPU step (chainforge.training.labelled_positions_loss, packed_attention)

and prints per run the trained tokens per second (the manifest's `tokens_per_s`: tokens over the
trainer's runtime), the process's peak RSS, the final loss, and tokens/s as a fraction of the
forward+backward bound of scripts/bench_roofline.py. The format check after training is off
(--max-new-tokens is not what is measured here).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# With CHAINFORGE_SFT_STEP=trl the stage keeps TRL's own CPU step (what it did before).
RUNNER = ("import os, sys, contextlib\n"
          "import chainforge.training as training\n"
          "if os.environ.get('CHAINFORGE_SFT_STEP') == 'trl':\n"
          "    training.labelled_positions_loss_applies = lambda trainer: False\n"
          "    training.packed_attention = lambda model, args: contextlib.nullcontext()\n"
          "from chainforge.cli import main\n"
          "sys.argv = ['chainforge'] + sys.argv[1:]\n"
          "main()\n")
SETTINGS = {"before": "trl", "after": "ours"}


def run_sft(out: Path, steps: int, step: str, model: str) -> dict:
    cmd = [sys.executable, "-c", RUNNER, "sft", "--model", model, "--data", str(ROOT / "data/toy-2digit/sft.jsonl"),
           "--output", str(out), "--max-steps", str(steps), "--batch-size", "8", "--learning-rate", "2e-4",
           "--warmup-ratio", "0.1", "--max-length", "512", "--max-new-tokens", "8", "--seed", "0",
           "--save-steps", "1000"]
    log = out.with_suffix(".log")
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "CHAINFORGE_SFT_STEP": step}, stdout=fh,
                                stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"exit {proc.returncode}:\n{log.read_text()[-3000:]}")
    metrics = json.loads((out / "chainforge.json").read_text())["metrics"]
    return {"metrics": metrics, "rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--model", default="smollm2")
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from chainforge.cli import _openmp_wait

    _openmp_wait()
    from bench_roofline import machine, train_bound

    m = machine()
    bound = train_bound(512, m)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, load average "
          f"{open('/proc/loadavg').read().split()[0]}; {m.line()}; forward+backward bound {bound:.0f} tokens/s",
          flush=True)
    rates: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, step in SETTINGS.items():
                res = run_sft(Path(tmp) / f"{name}-{r}", args.steps, step, args.model)
                mt = res["metrics"]
                rates.setdefault(name, []).append(mt["tokens_per_s"])
                print(f"{name:7s} round {r}: {mt['tokens_per_s']:6.1f} trained tokens/s "
                      f"({mt['tokens']} tokens, {mt['steps']} steps) = {mt['tokens_per_s'] / bound:.3f} of the bound, "
                      f"final loss {mt['final_loss']:.4f}, peak RSS {res['rss_mb']:.0f} MB, "
                      f"load {open('/proc/loadavg').read().split()[0]}", flush=True)
    mean = {k: sum(v) / len(v) for k, v in rates.items()}
    print(f"\nafter / before: {mean['after'] / mean['before']:.2f}x trained tokens/s")


if __name__ == "__main__":
    main()
