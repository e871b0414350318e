"""Benchmark: wall time of a GRPO step on CPU, before and after, in one run.

    python scripts/bench_grpo.py                       # learn recipe's settings, smollm2, 3 steps each
    python scripts/bench_grpo.py --model runs/learn/01-sft-cold --steps 4
    python scripts/bench_grpo.py --settings 2026-11-30,now --steps 2

Runs the real `chainforge grpo` stage (the learn recipe's GRPO settings: 8 completions × 2 prompts,
144 tokens, toy-2digit prompts) once per setting, one after the other on the same machine, and
prints per setting the seconds per optimizer step (trainer wall time / steps, model loading
excluded), the generation share of it, the process's peak RSS, and the speed-up over the first
setting:

  before       --precision fp32 --rollout-sampler trl, TRL's fused LM-head log-probs (before 2026-11-30)
  +bf16        --precision auto: bf16 autocast where the CPU has native bf16
  +logprobs    + log-probs of the completion positions only (chainforge.stages.grpo.completion_logps)
  2026-11-30   + --rollout-sampler engine, as it was then: the previous decode loop
               (sampling/reference.py), a bf16 copy of the policy made for every rollout, every
               row's prompt run through the update, libgomp's default OpenMP spin-wait
  +threads     + OpenMP threads that do not spin on a busy machine (chainforge.cli._openmp_wait)
  unpacked     + the current engine (continuous batching, shared prefix), the live policy under
               one autocast per rollout, each group's prompt run once in the update: the code
               until 2026-12-06 (CHAINFORGE_PACKED_LINEAR=0)
  packed       + the policy's linear weights laid out for oneDNN once per rollout
               (sampling/packed.py; the same numbers, so the same completions): until 2026-12-07
  now          + the update puts each prompt's rows back together before the loss's forward (TRL
               shuffles them, so most rows' prompts ran again) and stops after the last column a
               row needs (stages/grpo.py `_by_prompt`, `_trimmed_logits`): the defaults

Each row adds one change to the row above it. Each setting samples the same prompts from the same
seed, but different code draws different completions, so completion lengths differ a little; the
table prints them. On a CPU without native bf16, auto is fp32 and the bf16 rows measure nothing new.
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
# name: (options, environment)
SETTINGS = {
    "before": (["--precision", "fp32", "--rollout-sampler", "trl"],
               {"CF_BENCH": "trl-logprobs,no-shared-prompts", "GOMP_SPINCOUNT": "300000"}),
    "+bf16": (["--precision", "auto", "--rollout-sampler", "trl"],
              {"CF_BENCH": "trl-logprobs,no-shared-prompts", "GOMP_SPINCOUNT": "300000"}),
    "+logprobs": (["--precision", "auto", "--rollout-sampler", "trl"],
                  {"CF_BENCH": "no-shared-prompts", "GOMP_SPINCOUNT": "300000"}),
    "2026-11-30": (["--precision", "auto", "--rollout-sampler", "engine"],
                   {"CF_BENCH": "no-shared-prompts,bf16-copy", "CHAINFORGE_SAMPLER": "reference",
                    "GOMP_SPINCOUNT": "300000"}),
    "+threads": (["--precision", "auto", "--rollout-sampler", "engine"],
                 {"CF_BENCH": "no-shared-prompts,bf16-copy", "CHAINFORGE_SAMPLER": "reference"}),
    "unpacked": (["--precision", "auto", "--rollout-sampler", "engine"],
                 {"CHAINFORGE_PACKED_LINEAR": "0", "CF_BENCH": "unsorted"}),
    "packed": (["--precision", "auto", "--rollout-sampler", "engine"], {"CF_BENCH": "unsorted"}),
    "now": (["--precision", "auto", "--rollout-sampler", "engine"], {}),
}
# Runs the CLI; CF_BENCH names what the code did before, put back for the "before" rows.
RUNNER = ("import contextlib, copy, os, sys\n"
          "import chainforge.stages.grpo as grpo\n"
          "import chainforge.rollouts as rollouts\n"
          "old = set(os.environ.get('CF_BENCH', '').split(','))\n"
          "if 'trl-logprobs' in old:\n"
          "    grpo.completion_only_logps_apply = lambda *a: False\n"
          "if 'no-shared-prompts' in old:\n"
          "    grpo._shared_prompt_logits = lambda *a: None\n"
          "if 'bf16-copy' in old:\n"
          "    @contextlib.contextmanager\n"
          "    def copy_of_policy(self, trainer):\n"
          "        import torch\n"
          "        model = trainer.accelerator.unwrap_model(trainer.model)\n"
          "        yield copy.deepcopy(model).to(torch.bfloat16) if self.bf16 else model\n"
          "    rollouts.EngineRollouts._sampling_model = copy_of_policy\n"
          "if 'unsorted' in old:\n"
          "    grpo._by_prompt = lambda ids, mask, keep: None\n"
          "    def untrimmed(model, ids, mask, keep, share):\n"
          "        logits = grpo._shared_prompt_logits(model, ids, mask, keep) if share else None\n"
          "        if logits is None:\n"
          "            logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep + 1).logits[:, :-1]\n"
          "        return logits, keep\n"
          "    grpo._trimmed_logits = untrimmed\n"
          "from chainforge.cli import main\n"
          "sys.argv = ['chainforge'] + sys.argv[1:]\n"
          "main()\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--data", default=str(ROOT / "data/toy-2digit/train.jsonl"))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--num-generations", type=int, default=8)
    ap.add_argument("--prompts-per-step", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=144)
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset of " + ", ".join(SETTINGS))
    args = ap.parse_args()

    import torch

    from chainforge.models import native_bf16

    print(f"# {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"native bf16: {native_bf16('cpu')}; model {args.model}; {args.num_generations} × {args.prompts_per_step} "
          f"completions, {args.max_new_tokens} tokens, {args.steps} steps per setting", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.settings.split(","):
            out = Path(tmp) / name
            options, env = SETTINGS[name]
            cmd = [sys.executable, "-c", RUNNER, "grpo", "--model", args.model, "--data", args.data,
                   "--output", str(out), "--max-steps", str(args.steps), "--num-generations", str(args.num_generations),
                   "--prompts-per-step", str(args.prompts_per_step), "--max-new-tokens", str(args.max_new_tokens),
                   "--learning-rate", "1e-5", "--save-steps", "1000", "--seed", "0", *options]
            base = {k: v for k, v in os.environ.items()
                    if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "CHAINFORGE_SAMPLER", "CF_BENCH",
                                 "CHAINFORGE_PACKED_LINEAR")}
            log = out.with_suffix(".log")
            started = time.perf_counter()
            with open(log, "w") as fh:
                proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env={**base, **env})
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
            wall = time.perf_counter() - started
            if proc.returncode != 0:
                sys.exit(f"{name}: exit {proc.returncode}\n{log.read_text()[-3000:]}")
            metrics = json.loads((out / "chainforge.json").read_text())["metrics"]
            rows.append((name, metrics, wall))
            print(f"{name:12s} {metrics['seconds_per_step']:7.1f} s/step  generation share "
                  f"{metrics['generation_time_share']:.2f}  completion tokens {metrics['completion_tokens']:.0f}  "
                  f"(process {wall:.0f} s, peak RSS {usage.ru_maxrss / 1024:.0f} MB, load "
                  f"{open('/proc/loadavg').read().split()[0]})", flush=True)
    base = rows[0][1]["seconds_per_step"]
    print("\nsetting       s/step  generation  update   speed-up vs " + rows[0][0])
    for name, m, _ in rows:
        step, share = m["seconds_per_step"], m["generation_time_share"]
        print(f"{name:12s} {step:7.1f}  {step * share:9.1f}  {step * (1 - share):6.1f}   {base / step:5.2f}×")


if __name__ == "__main__":
    main()
