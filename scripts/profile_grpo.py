"""Where a GRPO step's time goes on CPU: each phase timed, and optionally an op-level profile.

    python -u scripts/profile_grpo.py --model runs/learn/00-sft-cold              # learn recipe: 8 × 4
    python -u scripts/profile_grpo.py --model runs/learn/00-sft-cold --ops 25     # + torch.profiler, top 25 ops
    python -u scripts/profile_grpo.py --beta 0                                    # without the reference model
    python -u scripts/profile_grpo.py --model runs/learn/00-sft-cold --adjacent-prompts  # the update before 2026-12-07
    python -u scripts/profile_grpo.py --model runs/learn/00-sft-cold --dropped-mask      # the rollouts before 2026-12-07 07:00

Runs the real `chainforge grpo` stage in this process (the learn recipe's GRPO settings: 8
completions × 4 prompts, 144 tokens, lr 1e-5, toy-2digit prompts, seed 0) for `--steps` optimizer
steps and times, per step, what the step is made of:

  generation     the rollouts (chainforge's sampling engine, EngineRollouts)
  rewards        the reward functions
  reference      the reference model's log-probs (no gradient; absent at --beta 0)
  policy fwd     the policy's log-probs with gradients (the loss's forward)
  backward       accelerate's backward
  optimizer      the optimizer step (with gradient clipping)
  other          the rest of the step (TRL's bookkeeping, advantages, logging, the rollout log)

The first step is reported apart (it pays one-time costs); the table is the mean over the others.
`--ops N` wraps the last step in `torch.profiler` and prints its N most expensive ops by self CPU time
(the profiler's own overhead inflates the decode loop's many small ops: read it for shares, not
wall time). Numbers from a busy machine are slower in proportion; compare within one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_grpo import add_step_options, adjacent_groups, grpo_args  # noqa: E402  (a sibling script)
LABEL = "phase: "
PHASES = ["generation", "rewards", "reference", "policy fwd", "backward", "optimizer", "other"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_options(ap, prompts_per_step=4)
    ap.add_argument("--beta", type=float, default=None, help="GRPO's KL weight (default: the stage's)")
    ap.add_argument("--ops", type=int, default=0, help="profile the last step with torch.profiler; print N ops")
    ap.add_argument("--adjacent-prompts", action="store_true",
                    help="the update as before 2026-12-07: only adjacent rows share a prompt's forward pass")
    ap.add_argument("--dropped-mask", action="store_true",
                    help="the rollouts as before 2026-12-07 07:00: a decode step with no column masked let "
                         "transformers drop the mask (SDPA's unmasked grouped-query path)")
    args = ap.parse_args()
    if args.steps < 2:
        ap.error("--steps must be at least 2 (the first step is reported apart)")

    import accelerate
    import torch
    import trl

    import chainforge.rollouts as rollouts
    import chainforge.stages.grpo as grpo

    spent: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    state = {"step": 0, "profiler": None}

    def timed(phase_of, fn):
        def wrapper(*a, **kw):
            phase = phase_of(*a, **kw)
            t0 = time.perf_counter()
            try:
                with torch.profiler.record_function(LABEL + phase):
                    return fn(*a, **kw)
            finally:
                spent[state["step"]][phase] += time.perf_counter() - t0
        return wrapper

    def logps_phase(trainer, model, *a, **kw):
        return "policy fwd" if torch.is_grad_enabled() else ("reference" if model is trainer.ref_model else "old logps")

    if args.adjacent_prompts:
        grpo._prompt_groups = adjacent_groups
    if args.dropped_mask:
        import chainforge.sampling.hf as hf

        hf._keep_decode_mask = lambda *a: False

    G = trl.GRPOTrainer
    rollouts.EngineRollouts.__call__ = timed(lambda *a, **k: "generation", rollouts.EngineRollouts.__call__)
    G._calculate_rewards = timed(lambda *a, **k: "rewards", G._calculate_rewards)
    G._get_per_token_logps_and_entropies = timed(logps_phase, G._get_per_token_logps_and_entropies)  # off CPU
    grpo.completion_logps = timed(logps_phase, grpo.completion_logps)  # what the stage calls on CPU
    accelerate.Accelerator.backward = timed(lambda *a, **k: "backward", accelerate.Accelerator.backward)
    accelerate.Accelerator.clip_grad_norm_ = timed(lambda *a, **k: "optimizer", accelerate.Accelerator.clip_grad_norm_)
    from accelerate.optimizer import AcceleratedOptimizer
    AcceleratedOptimizer.step = timed(lambda *a, **k: "optimizer", AcceleratedOptimizer.step)

    from transformers import TrainerCallback

    class Steps(TrainerCallback):
        def on_step_begin(self, a, s, control, **kw):
            state["step"] = s.global_step + 1
            state["t0"] = time.perf_counter()
            if args.ops and state["step"] == args.steps:
                state["profiler"] = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                state["profiler"].__enter__()

        def on_step_end(self, a, s, control, **kw):
            spent[state["step"]]["step"] = time.perf_counter() - state["t0"]
            if state["profiler"] is not None:
                state["profiler"].__exit__(None, None, None)

    import transformers.trainer as hf_trainer
    hf_trainer.DEFAULT_CALLBACKS = hf_trainer.DEFAULT_CALLBACKS + [Steps]

    from chainforge.cli import main as cli_main
    from chainforge.models import native_bf16

    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"native bf16: {native_bf16('cpu')}, load average {open('/proc/loadavg').read().split()[0]}; model "
          f"{args.model}; {args.num_generations} × {args.prompts_per_step} completions, {args.max_new_tokens} tokens, "
          f"{args.steps} steps" + (f", beta {args.beta}" if args.beta is not None else "")
          + (", the update before 2026-12-07 (--adjacent-prompts)" if args.adjacent_prompts else "")
          + (", the rollouts before 2026-12-07 07:00 (--dropped-mask)" if args.dropped_mask else ""), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["chainforge", *grpo_args(args, Path(tmp) / "out")]
        if args.beta is not None:
            argv += ["--beta", str(args.beta)]
        sys.argv = argv
        try:
            cli_main()
        except SystemExit as exc:
            if exc.code not in (None, 0):
                raise
        import json
        metrics = json.loads((Path(tmp) / "out" / "chainforge.json").read_text())["metrics"]

    print(f"completion tokens {metrics['completion_tokens']:.0f} per completion (mean over the run)")
    rest = [spent[s] for s in range(2, args.steps + 1)]
    seen = [p for p in PHASES[:-1] if any(p in r for r in rest)] + (["old logps"] if any("old logps" in r for r in rest) else [])

    def row(name, record):
        other = record["step"] - sum(record.get(p, 0.0) for p in seen)
        cells = [record.get(p, 0.0) for p in seen] + [other, record["step"]]
        return f"{name:10s} " + " ".join(f"{c:10.2f}" for c in cells)

    print("\nseconds    " + " ".join(f"{p:>10s}" for p in seen + ["other", "step"]))
    print(row("step 1", spent[1]))
    mean = {k: sum(r.get(k, 0.0) for r in rest) / len(rest) for k in seen + ["step"]}
    print(row(f"mean 2-{args.steps}", mean))
    print("share      " + " ".join(f"{mean[p] / mean['step']:10.2f}" for p in seen)
          + f" {(mean['step'] - sum(mean[p] for p in seen)) / mean['step']:10.2f}")
    if state["profiler"] is not None:
        print(f"\nstep {args.steps}, ops by self CPU time:")
        print(state["profiler"].key_averages().table(sort_by="self_cpu_time_total", row_limit=args.ops))
        print_ops_per_phase(state["profiler"], args.ops)


def print_ops_per_phase(profiler, n: int) -> None:
    """Each phase's ops by self CPU time (an op counts in the innermost phase that called it)."""
    per: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0]))
    for event in profiler.events():
        if event.name.startswith(LABEL):
            continue
        parent, phase = event.cpu_parent, "other"
        while parent is not None:
            if parent.name.startswith(LABEL):
                phase = parent.name[len(LABEL):]
                break
            parent = parent.cpu_parent
        cell = per[phase][event.name]
        cell[0] += event.self_cpu_time_total / 1e6
        cell[1] += 1
    for phase, ops in per.items():
        total = sum(v[0] for v in ops.values())
        print(f"\n{phase}: {total:.2f} s of self CPU time in ops")
        for name, (secs, calls) in sorted(ops.items(), key=lambda kv: -kv[1][0])[:n]:
            print(f"  {secs:8.3f} s {secs / total:6.1%} {calls:7d} calls  {name}")


if __name__ == "__main__":
    main()
