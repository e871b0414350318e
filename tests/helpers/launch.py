"""Several processes on one command: `torchrun` on this checkout's package."""

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
