"""Shared fixtures: a tiny random Qwen2 checkpoint built once per session, an isolated
CHAINFORGE_HOME, an in-process CLI runner, and the loopback fake API servers with the environment
that points the clients at them. What they are built from is tests/helpers/."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from chainforge.cli import _openmp_wait  # noqa: E402

_openmp_wait()  # as the command does, before anything loads torch: the suite runs on shared cores too

from helpers.cli import CLI  # noqa: E402  (tests/ is on sys.path from here)
from helpers.fake_apis import FakeAnthropic, FakeAnthropicBatches, FakeDeepSeek, FakeOpenAI  # noqa: E402

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
    from helpers.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def scripted_teacher(tmp_path_factory) -> Path:
    """A tiny Qwen2 that answers every prompt with the same Super CoT, answer \\boxed{7}
    (helpers.tiny.SEVEN): right on the prompts whose reference is 7, wrong on the others."""
    from helpers.tiny import SEVEN_PIECES, build_scripted_model

    return build_scripted_model(tmp_path_factory.mktemp("models") / "seven", SEVEN_PIECES)


@pytest.fixture(scope="session")
def chainforge_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("chainforge-home")


@pytest.fixture(autouse=True)
def _isolated_home(chainforge_home, monkeypatch):
    # Tests that need the real embedded model point CHAINFORGE_HOME elsewhere themselves.
    if "CHAINFORGE_HOME" not in os.environ or os.environ["CHAINFORGE_HOME"] != str(chainforge_home):
        monkeypatch.setenv("CHAINFORGE_HOME", str(chainforge_home))


@pytest.fixture
def cli() -> CLI:
    return CLI()


# ---- the loopback fake APIs -------------------------------------------------------------------------

@pytest.fixture
def fast_backoff(monkeypatch):
    """Retries back off in hundredths of a second instead of seconds."""
    import chainforge.providers.retry as retry

    monkeypatch.setattr(retry, "BACKOFF_BASE_S", 0.01)


@pytest.fixture
def deepseek(monkeypatch, fast_backoff):
    """A fake DeepSeek on loopback; DEEPSEEK_API_KEY and DEEPSEEK_BASE_URL point at it."""
    with FakeDeepSeek(latency=0.01) as server:
        monkeypatch.setenv("DEEPSEEK_API_KEY", server.api_key)
        monkeypatch.setenv("DEEPSEEK_BASE_URL", server.url)
        yield server


@pytest.fixture
def openai_server(monkeypatch, fast_backoff):
    """A fake OpenAI-compatible server (vLLM-like) on loopback serving `r1` and `r1-distill`;
    OPENAI_API_KEY is its key; pass its url as --teacher-base-url."""
    with FakeOpenAI(latency=0.01) as server:
        monkeypatch.setenv("OPENAI_API_KEY", server.api_key)
        yield server


@pytest.fixture
def anthropic_api(monkeypatch):
    """A fake Anthropic Messages API on loopback; ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL point at it."""
    with FakeAnthropic() as server:
        monkeypatch.setenv("ANTHROPIC_API_KEY", server.api_key)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        yield server


@pytest.fixture
def anthropic_batches(monkeypatch):
    """A fake Anthropic with Message Batches on loopback; ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL
    point at it."""
    with FakeAnthropicBatches() as server:
        monkeypatch.setenv("ANTHROPIC_API_KEY", server.api_key)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        yield server
