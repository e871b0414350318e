"""Child processes on this checkout's package: `torchrun`, and a run killed at a training step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def torchrun(args: list, cwd: Path, env: dict | None = None, nproc: int = 2, timeout: int = 600,
             weights_dir: Path | None = None):
    """`torchrun --standalone --nproc_per_node N -m chainforge ARGS` with this checkout's package.
    With `weights_dir`, each rank also saves the weights it holds when training ends there, as
    rank<N>.pt (helpers.probe_run)."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"),
                                                             os.environ.get("PYTHONPATH", "")]),
                "OMP_NUM_THREADS": "1", **(env or {})}
    module = "chainforge"
    if weights_dir is not None:
        module, full_env["CHAINFORGE_TEST_WEIGHTS_DIR"] = "helpers.probe_run", str(weights_dir)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", module, *[str(a) for a in args]]
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def chainforge_steps(args: list, cwd: Path, step_log: Path, kill_at_step: int | None = None, timeout: int = 600):
    """Run `python -m chainforge ARGS` in a child process, logging its training steps to `step_log`
    (one line per optimizer step) and, with `kill_at_step`, SIGKILLing it when that step ends
    (after the checkpoints saved at earlier steps; helpers.probe_run). Returns the CompletedProcess."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"),
                                                        os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CHAINFORGE_TEST_STEP_LOG": str(step_log),
           "CHAINFORGE_TEST_KILL_AT_STEP": str(kill_at_step or "")}
    return subprocess.run([sys.executable, "-m", "helpers.probe_run", *[str(a) for a in args]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def logged_steps(step_log: Path) -> list[int]:
    return [int(line) for line in Path(step_log).read_text().split()] if Path(step_log).exists() else []
