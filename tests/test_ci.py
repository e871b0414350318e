"""CI runs the whole suite: `.ci/run` (the README's `scripts/test.sh`) collects every test, the slow
ones included (the reward-direction runs, several processes, the real SmolLM2, the installed wheel)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def collected(cmd: list[str], **env: str) -> set[str]:
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **env})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return {line for line in r.stdout.splitlines() if "::" in line}


def test_ci_runs_the_slow_tests_too():
    pytest = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    slow = collected(pytest + ["-m", "slow"])
    everything = collected(pytest + ["-m", "slow or not slow"])
    assert len(slow) >= 13 and slow < everything
    # .ci/run as CI calls it, with this suite's venv; pytest only lists what it would run
    # (PYTEST_ADDOPTS reaches the pytest that scripts/test.sh starts, whose own -q lists node ids)
    ci = collected(["bash", str(REPO / ".ci" / "run")], PYTEST_ADDOPTS="--collect-only -p no:cacheprovider",
                   CHAINFORGE_VENV=str(Path(sys.executable).parent.parent))
    assert ci == everything, (sorted(everything - ci)[:5], sorted(ci - everything)[:5])
