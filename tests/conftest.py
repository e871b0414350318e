"""Shared fixtures: a tiny random Qwen2 checkpoint built once per session, an isolated
CHAINFORGE_HOME, and an in-process CLI runner."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("DISABLE_MLFLOW_INTEGRATION", "TRUE")
for secret in ("DEEPSEEK_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_API_KEY"):
    os.environ.pop(secret, None)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer random Qwen2 (hidden 64) with a byte-level BPE tokenizer and a ChatML template."""
    from tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def chainforge_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("chainforge-home")


@pytest.fixture(autouse=True)
def _isolated_home(chainforge_home, monkeypatch):
    # Tests that need the real embedded model point CHAINFORGE_HOME elsewhere themselves.
    if "CHAINFORGE_HOME" not in os.environ or os.environ["CHAINFORGE_HOME"] != str(chainforge_home):
        monkeypatch.setenv("CHAINFORGE_HOME", str(chainforge_home))


class CLI:
    """Run `chainforge ARGS` in-process; returns typer's Result (exit_code, stdout, stderr)."""

    def __call__(self, *args, env=None):
        from typer.testing import CliRunner

        from chainforge.cli import app

        result = CliRunner().invoke(app, [str(a) for a in args], env=env, catch_exceptions=True)
        if result.exception and not isinstance(result.exception, SystemExit):
            import traceback

            traceback.print_exception(result.exception)
        return result


@pytest.fixture
def cli() -> CLI:
    return CLI()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sigint_default() -> None:
    """`preexec_fn` for a child the test interrupts with SIGINT: a suite started in the background
    (`cmd &` in a non-interactive shell) inherits SIGINT ignored, and Python keeps it ignored, so the
    child would never see the signal."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
