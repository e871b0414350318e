"""Crash safety: `python -m chainforge collect` killed (SIGKILL) or interrupted (SIGINT) mid-run, then
resumed with the same command. A subprocess is the point here: the signal must hit a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.cli import sigint_default
from helpers.files import write_jsonl
from helpers.fake_apis import FakeDeepSeek

N = 40
CONCURRENCY = 4


def start(tmp_path: Path, server: FakeDeepSeek, out: Path) -> subprocess.Popen:
    prompts = tmp_path / "prompts.jsonl"
    if not prompts.exists():
        write_jsonl(prompts, [{"prompt": f"P{i}: what is 6 times 7?", "answer": "42"} for i in range(N)])
    env = dict(os.environ, DEEPSEEK_API_KEY=server.api_key, DEEPSEEK_BASE_URL=server.url,
               PYTHONPATH=str(Path(__file__).parent.parent))
    env.pop("ANTHROPIC_API_KEY", None)
    return subprocess.Popen([sys.executable, "-m", "chainforge", "collect", "--prompts", str(prompts),
                             "--output", str(out), "--concurrency", str(CONCURRENCY)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_default)


def wait_for_rows(out: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    journal = out / "journal.jsonl"
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if journal.exists():
            lines = journal.read_text().count("\n")
            if lines >= n:
                return lines
        time.sleep(0.02)
    raise AssertionError("the journal did not grow")


def journal_prompts(out: Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in (out / "journal.jsonl").read_text().splitlines()]


def test_sigkill_then_rerun_gives_one_row_per_prompt_and_resends_at_most_the_in_flight(tmp_path):
    from datasets import load_from_disk

    with FakeDeepSeek(latency=0.15) as server:
        out = tmp_path / "out"
        proc = start(tmp_path, server, out)
        wait_for_rows(out, 8, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        before = journal_prompts(out)
        assert 8 <= len(before) < N
        sent_before = dict(server.attempts)

        proc = start(tmp_path, server, out)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr

        rows = list(load_from_disk(str(out)))
        assert sorted(r["prompt"] for r in rows) == sorted(f"P{i}: what is 6 times 7?" for i in range(N))
        assert len({r["id"] for r in rows}) == N
        assert all(server.attempts[p] == 1 for p in before)  # no journaled prompt sent again
        resent = [p for p, n in server.attempts.items() if n > 1]
        assert len(resent) <= CONCURRENCY  # only what was in flight at the kill
        assert set(resent) <= set(sent_before) - set(before)


def test_sigint_cancels_in_flight_keeps_the_journal_and_exits_130(tmp_path):
    from datasets import load_from_disk

    with FakeDeepSeek(latency=0.15) as server:
        out = tmp_path / "out"
        proc = start(tmp_path, server, out)
        wait_for_rows(out, 4, proc)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 130, stderr
        assert "resume with the same command" in stderr
        assert "Traceback" not in stderr
        manifest = json.loads((out / "chainforge.json").read_text())
        assert manifest["status"] == "incomplete"
        before = journal_prompts(out)  # every line parses: the journal is intact
        assert len(before) < N

        proc = start(tmp_path, server, out)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert len(load_from_disk(str(out))) == N
        assert all(server.attempts[p] == 1 for p in before)


def test_a_torn_last_journal_line_is_cut_and_that_prompt_redone(tmp_path):
    """A machine crash can leave half a line; the rerun drops it and asks for that prompt again."""
    with FakeDeepSeek() as server:
        out = tmp_path / "out"
        proc = start(tmp_path, server, out)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        journal = out / "journal.jsonl"
        lines = journal.read_text().splitlines(keepends=True)
        manifest = json.loads((out / "chainforge.json").read_text())
        manifest["status"] = "incomplete"
        (out / "chainforge.json").write_text(json.dumps(manifest))
        journal.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
        torn = json.loads(lines[-1])["prompt"]

        proc = start(tmp_path, server, out)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert server.attempts[torn] == 2 and sum(server.attempts.values()) == N + 1
        assert len(journal.read_text().splitlines()) == N


@pytest.mark.slow
def test_sigkill_repeatedly_still_converges(tmp_path):
    """Kill it three times at random points; the fourth run completes with one row per prompt."""
    from datasets import load_from_disk

    with FakeDeepSeek(latency=0.1) as server:
        out = tmp_path / "out"
        for k in range(3):
            proc = start(tmp_path, server, out)
            wait_for_rows(out, 6 * (k + 1), proc)
            proc.kill()
            proc.wait(10)
        proc = start(tmp_path, server, out)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert len({r["id"] for r in load_from_disk(str(out))}) == N


@pytest.mark.parametrize("bad", ['{"id": "P2", "prompt": "P2: wh', "[1, 2]"], ids=["not-json", "not-an-object"])
def test_a_corrupt_line_in_the_middle_of_the_journal_costs_only_that_prompt(tmp_path, bad):
    """Line 3 of a 10-row journal goes bad (a disk hiccup, a hand edit): the rerun keeps the 9 good
    rows, warns once, and asks the API again for that one prompt only."""
    from datasets import load_from_disk

    prompts = [f"P{i}: what is 6 times 7?" for i in range(10)]
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p, "answer": "42"} for p in prompts])
    with FakeDeepSeek() as server:
        out = tmp_path / "out"
        proc = start(tmp_path, server, out)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        journal = out / "journal.jsonl"
        lines = journal.read_text().splitlines()
        assert len(lines) == 10 and sum(server.attempts.values()) == 10
        lost = json.loads(lines[2])["prompt"]
        lines[2] = bad
        journal.write_text("\n".join(lines) + "\n")
        manifest = json.loads((out / "chainforge.json").read_text())
        manifest["status"] = "incomplete"  # as a run stopped before its end leaves it
        (out / "chainforge.json").write_text(json.dumps(manifest))

        proc = start(tmp_path, server, out)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert server.attempts[lost] == 2 and sum(server.attempts.values()) == 11  # exactly 1 re-request
        err = " ".join(stderr.split())
        assert err.count("warning:") == 1 and "skipped 1 unreadable line (kept 9)" in err
        assert "9 done" in err
        rows = list(load_from_disk(str(out)))
        assert sorted(r["prompt"] for r in rows) == sorted(prompts)
        assert json.loads((out / "chainforge.json").read_text())["metrics"]["rows"] == 10
