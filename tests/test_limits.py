"""collect's throttles and time limit against a real server on loopback: `--requests-per-minute` and
`--tokens-per-minute` space the requests as they reach the server (each request's start time is
recorded there), and `--request-timeout` ends a reply that trickles in for ever."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from helpers.files import manifest, write_jsonl

N = 5
PROMPTS = [f"Q{i}: what is 6 times 7?" for i in range(N)]  # 22 characters each


def prompts(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "p.jsonl", [{"prompt": p, "answer": "42"} for p in PROMPTS])


def assert_paced(server, every: float) -> None:
    """The requests reached the server one per `every` seconds. The client paces when it sends; the
    server sees that up to the time a request takes to get there (the first one also opens the
    connection), so any k+1 consecutive starts span at least (k - 1) intervals: a limiter that sent
    them together fails that for k = 2 already. On average they are spaced by about `every`."""
    starts = sorted(r["t"] for r in server.requests if r["path"].endswith("/chat/completions"))
    assert len(starts) == N, starts
    gaps = [round(b - a, 3) for a, b in zip(starts, starts[1:])]
    for i in range(N):
        for j in range(i + 2, N):
            assert starts[j] - starts[i] >= (j - i - 1) * every - 0.02, (i, j, gaps)
    assert (N - 2) * every <= starts[-1] - starts[0] < (N - 1) * every * 1.5, gaps


def collect(cli, tmp_path, *extra):
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts(tmp_path), "--output", out, "--expander", "none",
            "--concurrency", 32, *extra)
    assert r.exit_code == 0, r.stderr
    assert manifest(out)["metrics"]["rows"] == N
    return out


def test_requests_per_minute_spaces_request_starts(cli, deepseek, tmp_path):
    # 120 a minute: one every 0.5 s, although 32 may be in flight
    collect(cli, tmp_path, "--requests-per-minute", 120)
    assert_paced(deepseek, 0.5)


def test_tokens_per_minute_spaces_request_starts_by_their_estimated_tokens(cli, deepseek, tmp_path):
    # a request's estimate: 22 prompt characters / 4 = 5, plus --max-new-tokens 95 = 100 tokens;
    # 12,000 tokens a minute: one request every 0.5 s
    collect(cli, tmp_path, "--tokens-per-minute", 12000, "--max-new-tokens", 95)
    assert all(r["json"]["max_tokens"] == 95 for r in deepseek.requests)
    assert_paced(deepseek, 0.5)


def test_request_timeout_ends_a_reply_that_never_finishes(cli, deepseek, tmp_path, monkeypatch):
    """The fake trickles a keep-alive byte every 0.05 s for ever, so the idle timeout (60 s) never
    fires: only the whole-request limit ends it. Its default is lowered to 20 s here so that an
    option that does not reach the client fails this test instead of hanging it for 30 minutes."""
    import chainforge.providers.http as http

    monkeypatch.setattr(http, "DEADLINE_S", 20.0)
    deepseek.plan(PROMPTS[0], "trickle")
    started = time.monotonic()
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts(tmp_path), "--output", out, "--expander", "none",
            "--max-retries", 0, "--request-timeout", 1.5)
    took = time.monotonic() - started
    assert r.exit_code == 0, r.stderr
    (failed,) = [json.loads(line) for line in (out / "failed.jsonl").read_text().splitlines()]
    assert failed["prompt"] == PROMPTS[0]
    assert "timed out: no complete reply within 1.5 s" in failed["reason"], failed
    assert manifest(out)["metrics"]["rows"] == N - 1
    assert 1.5 <= took < 20, took


@pytest.mark.parametrize("option", ["--requests-per-minute", "--tokens-per-minute", "--request-timeout"])
def test_limits_below_their_minimum_are_refused(cli, deepseek, tmp_path, option):
    from helpers.cli import assert_exit_2

    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts(tmp_path), "--output", out, "--expander", "none", option, 0)
    assert_exit_2(r, option, output=out)
    assert deepseek.requests == []
