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
  grouped      + the update runs each prompt once wherever TRL's shuffle put its rows (before, only
               adjacent rows shared one, so most rows' prompts ran again: stages/grpo.py
               `_prompt_groups`): until 2026-12-07 07:00
  now          + every decode step hands SDPA its mask (sampling/hf.py `_keep_decode_mask`): with
               no column masked (a group's 8 rows of one prompt, prompts of one length) transformers
               dropped it and ran SDPA's several times slower unmasked grouped-query path: the defaults

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
                 {"CHAINFORGE_PACKED_LINEAR": "0", "CF_BENCH": "adjacent-prompts"}),
    "packed": (["--precision", "auto", "--rollout-sampler", "engine"], {"CF_BENCH": "adjacent-prompts"}),
    "grouped": (["--precision", "auto", "--rollout-sampler", "engine"], {"CF_BENCH": "dropped-mask"}),
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
          "if 'dropped-mask' in old or 'adjacent-prompts' in old:\n"
          "    import chainforge.sampling.hf as hf\n"
          "    hf._keep_decode_mask = lambda *a: False\n"
          "if 'adjacent-prompts' in old:\n"
          "    sys.path.insert(0, os.path.join(os.getcwd(), 'scripts'))\n"
          "    from bench_grpo import adjacent_groups\n"
          "    grpo._prompt_groups = adjacent_groups\n"
          "from chainforge.cli import main\n"
          "sys.argv = ['chainforge'] + sys.argv[1:]\n"
          "main()\n")


def adjacent_groups(prompt, prompt_mask):
    """The GRPO update's prompt grouping until 2026-12-07 (for the rows that put it back): only
    adjacent rows with one prompt shared its forward pass."""
    import torch

    same = (prompt[1:] == prompt[:-1]).all(-1) & (prompt_mask[1:] == prompt_mask[:-1]).all(-1)
    if not bool(same.any()):
        return None
    owner = torch.cat([same.new_zeros(1, dtype=torch.long), (~same).long().cumsum(0)])
    heads = torch.cat([torch.ones(1, dtype=torch.bool, device=same.device), ~same]).nonzero().flatten()
    return owner, heads


def add_step_options(ap: argparse.ArgumentParser, prompts_per_step: int) -> None:
    """The options of the GRPO run a step is measured in (also scripts/profile_grpo.py's)."""
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--data", default=str(ROOT / "data/toy-2digit/train.jsonl"))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--num-generations", type=int, default=8)
    ap.add_argument("--prompts-per-step", type=int, default=prompts_per_step)
    ap.add_argument("--max-new-tokens", type=int, default=144)


def grpo_args(args, output) -> list[str]:
    """`chainforge grpo`'s arguments for that run (lr 1e-5, seed 0, no checkpoint saved)."""
    return ["grpo", "--model", args.model, "--data", args.data, "--output", str(output),
            "--max-steps", str(args.steps), "--num-generations", str(args.num_generations),
            "--prompts-per-step", str(args.prompts_per_step), "--max-new-tokens", str(args.max_new_tokens),
            "--learning-rate", "1e-5", "--save-steps", "1000", "--seed", "0"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_options(ap, prompts_per_step=2)
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
            cmd = [sys.executable, "-c", RUNNER, *grpo_args(args, out), *options]
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
