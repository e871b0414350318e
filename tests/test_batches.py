"""--expander-batch: expansions as Anthropic Message Batches, against the loopback fake of the batches
endpoints (tests/helpers/fake_apis.py: FakeAnthropicBatches), through the real anthropic SDK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.files import manifest, write_jsonl

from chainforge.providers.batches import split_batches
from chainforge.formats import parse_super_cot

N = 4


@pytest.fixture
def servers(deepseek, anthropic_batches):
    """The fake DeepSeek and Anthropic batches servers (conftest.py) and the environment naming them."""
    ds, an = deepseek, anthropic_batches
    env = {"DEEPSEEK_API_KEY": ds.api_key, "DEEPSEEK_BASE_URL": ds.url,
           "ANTHROPIC_API_KEY": an.api_key, "ANTHROPIC_BASE_URL": an.url}
    return ds, an, env


def prompts(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "prompts.jsonl",
                       [{"prompt": f"Q{i}: what is 6 times 7?", "answer": "42"} for i in range(N)])


def rows_of(out: Path) -> list[dict]:
    from datasets import load_from_disk

    return list(load_from_disk(str(out)))


def metrics(out: Path) -> dict:
    return manifest(out)["metrics"]


def batch_posts(an) -> list[dict]:
    return [r for r in an.requests if r.get("method") == "POST" and r["path"].rstrip("/").endswith("/batches")]


def sync_posts(an) -> list[dict]:
    return [r for r in an.requests if r["path"].rstrip("/") == "/v1/messages"]


def collect_args(data: Path, out: Path, *extra) -> list[str]:
    return ["collect", "--prompts", str(data), "--output", str(out), "--expander", "anthropic",
            "--concurrency", "2", *extra]


def test_killed_after_submission_resumes_the_same_batches_and_matches_a_synchronous_run(cli, tmp_path, servers):
    ds, an, env = servers
    data, out = prompts(tmp_path), tmp_path / "batched"
    an.hold = True  # the batch stays in progress until the first process is dead
    proc = subprocess.Popen([sys.executable, "-m", "chainforge", *collect_args(data, out, "--expander-batch",
                                                                                "--poll-interval", "0.05")],
                            env=dict(os.environ, **env, PYTHONPATH=str(Path(__file__).parent.parent)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        journal = out / "expander-batches.jsonl"
        while not (journal.exists() and journal.read_text().endswith("\n")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no batch was submitted"
            time.sleep(0.05)
        while not any(b["polls"] for b in an.batches.values()):  # polling: between submission and results
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.communicate()
    assert len(an.created) == 1 and not sync_posts(an)
    submitted = batch_posts(an)[0]["json"]["requests"]
    assert len(submitted) == N  # one hedged step per teacher reply
    teacher_calls = len(ds.requests)

    an.hold = False
    r = cli(*collect_args(data, out, "--expander-batch", "--poll-interval", "0.05"))
    assert r.exit_code == 0, r.stderr
    assert len(an.created) == 1 and len(batch_posts(an)) == 1  # zero resubmitted batches
    assert len(ds.requests) == teacher_calls  # the teacher's rows were journaled before the batch
    assert "batches 1 submitted" in r.stderr
    batched = rows_of(out)
    m_batch = metrics(out)
    assert m_batch["expansion_batches"] == 1 and m_batch["expanded_steps"] == N

    sync = tmp_path / "sync"
    r = cli(*collect_args(data, sync))
    assert r.exit_code == 0, r.stderr
    assert len(sync_posts(an)) == N
    expected = rows_of(sync)
    assert [row["text"] for row in batched] == [row["text"] for row in expected]
    for b, s in zip(batched, expected):
        assert b["expansions"] == s["expansions"] and b["expansions"][1] is not None
        assert b["usage"]["expander"] == s["usage"]["expander"] and b["usage"]["teacher"] == s["usage"]["teacher"]
        assert parse_super_cot(b["text"]).expansions == b["expansions"]
    m_sync = metrics(sync)
    assert m_sync["expansion_cost_usd"] > 0
    assert m_batch["expansion_cost_usd"] == pytest.approx(m_sync["expansion_cost_usd"] / 2, rel=1e-4)
    teacher_cost = m_sync["cost_usd"] - m_sync["expansion_cost_usd"]
    assert m_batch["cost_usd"] == pytest.approx(teacher_cost + m_sync["expansion_cost_usd"] / 2, rel=1e-4)


def test_an_errored_item_falls_back_to_the_unexpanded_step(cli, tmp_path, servers):
    _, an, _ = servers
    an.item_faults = {"Q1: what": "errored"}
    out = tmp_path / "out"
    r = cli(*collect_args(prompts(tmp_path), out, "--expander-batch", "--poll-interval", "0.01"))
    assert r.exit_code == 0, r.stderr
    rows = {row["prompt"][:2]: row for row in rows_of(out)}
    assert rows["Q1"]["expansions"] == [None, None, None] and rows["Q1"]["uncertain"] == [False, True, False]
    assert "<explanation>" not in rows["Q1"]["text"]
    for q in ("Q0", "Q2", "Q3"):
        assert rows[q]["expansions"][1].startswith("The step is valid")
    m = metrics(out)
    assert m["expanded_steps"] == N - 1 and m["uncertain_steps"] == N


def test_an_expired_batch_leaves_every_step_unexpanded_and_the_run_finishes(cli, tmp_path, servers):
    _, an, _ = servers
    an.expire = {0}
    out = tmp_path / "out"
    r = cli(*collect_args(prompts(tmp_path), out, "--expander-batch", "--poll-interval", "0.01"))
    assert r.exit_code == 0, r.stderr
    rows = rows_of(out)
    assert len(rows) == N and all(row["expansions"] == [None, None, None] for row in rows)
    assert all(parse_super_cot(row["text"]).expanded == 0 for row in rows)
    assert metrics(out)["expanded_steps"] == 0 and metrics(out)["expansion_cost_usd"] == 0


def test_split_batches_keeps_each_batch_within_both_limits():
    reqs = [{"custom_id": f"r{i}", "params": {"text": "x" * (10 + i % 3)}} for i in range(25)]
    by_count = list(split_batches(reqs, max_requests=10, max_bytes=10 ** 9))
    assert [len(c) for c in by_count] == [10, 10, 5]
    size = len(json.dumps(reqs[0]).encode()) + 1
    by_bytes = list(split_batches(reqs, max_requests=10 ** 6, max_bytes=size * 4 + 3))
    assert all(sum(len(json.dumps(r).encode()) + 1 for r in c) <= size * 4 + 3 for c in by_bytes)
    assert [r for c in by_bytes for r in c] == reqs and len(by_bytes) > 6


def test_expander_batch_with_another_expander_is_exit_2_and_nothing_created(cli, tmp_path):
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts(tmp_path), "--output", out, "--teacher", "local",
            "--expander", "local", "--expander-batch")
    assert r.exit_code == 2
    assert "--expander-batch" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_expander_batch_without_an_anthropic_key_is_exit_2(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts(tmp_path), "--output", out, "--teacher", "local", "--expander-batch")
    assert r.exit_code == 2
    assert "--expander-batch" in r.stderr and "ANTHROPIC_API_KEY" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_a_refused_batch_submission_stops_with_exit_1_and_keeps_the_rows(cli, tmp_path, servers, monkeypatch):
    ds, an, _ = servers
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-wrong-key")
    out = tmp_path / "out"
    data = prompts(tmp_path)
    # the preflight finds the refused key before anything is paid or created
    r = cli(*collect_args(data, out, "--expander-batch", "--poll-interval", "0.01"))
    assert r.exit_code == 1 and "HTTP 401" in r.stderr and "ANTHROPIC_API_KEY" in r.stderr
    assert not out.exists() and not ds.requests and not an.created
    # without it, the refused batch submission stops the run once the teacher's rows are in
    r = cli(*collect_args(data, out, "--expander-batch", "--poll-interval", "0.01", "--no-preflight"))
    assert r.exit_code == 1 and "HTTP 401" in r.stderr and "sk-wrong-key" not in r.stderr
    assert json.loads((out / "chainforge.json").read_text())["status"] == "incomplete"
    assert (out / "journal.jsonl").read_text().count("\n") == N and not an.created
    teacher_calls = len(ds.requests)

    monkeypatch.setenv("ANTHROPIC_API_KEY", an.api_key)  # the fix, then the same command
    r = cli(*collect_args(data, out, "--expander-batch", "--poll-interval", "0.01"))
    assert r.exit_code == 0, r.stderr
    assert len(ds.requests) == teacher_calls and len(an.created) == 1
    assert metrics(out)["expanded_steps"] == N
