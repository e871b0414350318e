"""Child processes on this checkout's package: `torchrun`, and a run killed at a training step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def torchrun(args: list, cwd: Path, env: dict | None = None, nproc: int = 2, timeout: int = 600):
    """`torchrun --standalone --nproc_per_node N -m chainforge ARGS` with this checkout's package."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "chainforge", *[str(a) for a in args]]
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


# `python -m chainforge ARGS` with a trainer callback that logs each finished optimizer step to
# $CHAINFORGE_TEST_STEP_LOG and, at step $CHAINFORGE_TEST_KILL_AT_STEP, kills its own process with
# SIGKILL (no handler runs, nothing is cleaned up: what a power cut or the OOM killer leaves).
_KILLED_AT_STEP = """
import os, runpy, signal, sys
import transformers.trainer as hf_trainer
from transformers import TrainerCallback

log, kill_at = os.environ["CHAINFORGE_TEST_STEP_LOG"], int(os.environ.get("CHAINFORGE_TEST_KILL_AT_STEP") or 0)

class Steps(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        with open(log, "a") as f:
            f.write(f"{state.global_step}\\n")
        if state.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

hf_trainer.DEFAULT_CALLBACKS = hf_trainer.DEFAULT_CALLBACKS + [Steps]
sys.argv = ["chainforge", *sys.argv[1:]]
runpy.run_module("chainforge", run_name="__main__")
"""


def chainforge_steps(args: list, cwd: Path, step_log: Path, kill_at_step: int | None = None, timeout: int = 600):
    """Run `python -m chainforge ARGS` in a child process, logging its training steps to `step_log`
    (one line per optimizer step) and, with `kill_at_step`, SIGKILLing it when that step ends
    (after the checkpoints saved at earlier steps). Returns the CompletedProcess."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "CHAINFORGE_TEST_STEP_LOG": str(step_log),
           "CHAINFORGE_TEST_KILL_AT_STEP": str(kill_at_step or "")}
    return subprocess.run([sys.executable, "-c", _KILLED_AT_STEP, *[str(a) for a in args]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def logged_steps(step_log: Path) -> list[int]:
    return [int(line) for line in Path(step_log).read_text().split()] if Path(step_log).exists() else []
