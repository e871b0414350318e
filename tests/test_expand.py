"""Grounding of kept rows in reject and distill (--expander), through the one path in
chainforge/providers/grounding.py, against the loopback Anthropic fake (tests/helpers/fake_apis.py) and the tiny model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
from helpers.files import write_jsonl
from helpers.fake_apis import FakeAnthropic, default_anthropic_answer

from chainforge.steps import UncertaintyRule
from chainforge.providers.grounding import Grounded, rewrite, trace_parts
from chainforge.formats import parse_super_cot

REWARD = "helpers.rewards:vowel_share"  # a reward only some candidates pass
GROUND = ["--expander", "anthropic", "--long-step-words", "2", "--max-expansions", "2"]
RULE = UncertaintyRule.build(long_step_words=2)


@pytest.fixture
def data(tmp_path):
    rows = [{"id": f"q{i}", "prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(4)]
    return write_jsonl(tmp_path / "p.jsonl", rows)


def reject_args(tiny_model, data, out, *extra):
    return ["reject", "--model", str(tiny_model), "--data", str(data), "--output", str(out), "--max-new-tokens",
            "24", "--num-samples", "4", "--temperature", "1.0", "--rewards", REWARD, *map(str, extra)]


def candidates(out: Path) -> list[str]:
    return [c["text"] for line in (out / "candidates.jsonl").read_text().splitlines()
            for c in json.loads(line)["completions"]]


def step_of(request: dict) -> str:
    """The step an expander request quotes (the prompt's text between the question and the ask)."""
    text = request["json"]["messages"][-1]["content"]
    return re.search(r"One step of their reasoning reads:\n\n(.*)\n\nIn at most three sentences", text, re.S).group(1)


def assert_grounded_only_where_uncertain(rows) -> int:
    grounded = 0
    for row in rows:
        parsed = parse_super_cot(row["text"])
        assert row["messages"][-1] == {"role": "assistant", "content": row["text"]}
        for step, exp in zip(parsed.steps, parsed.expansions):
            if exp is not None:
                assert RULE.is_uncertain(step)  # an <explanation> only in an uncertain step
                assert exp == default_anthropic_answer("")
                grounded += 1
    return grounded


def test_reject_grounds_only_the_kept_candidates(cli, tiny_model, data, tmp_path, anthropic_api):
    probe = tmp_path / "probe"
    assert cli(*reject_args(tiny_model, data, probe, "--min-reward", 0)).exit_code == 0
    from helpers.rewards import vowel_share

    scores = sorted(vowel_share(candidates(probe)))
    threshold = scores[len(scores) // 2]  # some candidates pass, some are discarded
    assert not anthropic_api.requests  # --expander defaults to none

    out = tmp_path / "out"
    r = cli(*reject_args(tiny_model, data, out, "--min-reward", threshold, "--keep", "all-passing", *GROUND))
    assert r.exit_code == 0, r.stderr
    rows = list(datasets.load_from_disk(str(out)))
    grounded = assert_grounded_only_where_uncertain(rows)
    assert grounded > 0
    kept_steps = {s for row in rows for s in parse_super_cot(row["text"]).steps}
    asked = [step_of(q) for q in anthropic_api.requests]
    assert len(asked) == grounded and all(s in kept_steps for s in asked)  # never a discarded candidate's
    m = json.loads((out / "chainforge.json").read_text())["metrics"]
    assert m["expanded_steps"] == grounded and m["expansion_failures"] == 0
    assert m["expansion_requests"] == grounded and m["expansion_cost_usd"] > 0 and m["expansion_input_tokens"] > 0



def paid(journal: Path) -> int:
    """Groundings journaled so far (answered requests: expanded or failed)."""
    if not journal.exists():
        return 0
    records = [json.loads(line) for line in journal.read_text().splitlines() if line.endswith("}")]
    return sum(sum(e is not None for e in r["expansions"]) + r["failures"] for r in records)


def test_reject_killed_while_grounding_resumes_without_paying_twice(tiny_model, data, tmp_path):
    served = []

    def slow_answer(text: str) -> str:  # runs on the server's loop: requests are answered one at a time
        time.sleep(0.4)
        served.append(text)
        return default_anthropic_answer(text)

    out = tmp_path / "out"
    # registered rewards only: the child process must not import the test modules (conftest drops the keys)
    args = reject_args(tiny_model, data, out, "--min-reward", 0, "--keep", "all-passing", *GROUND)
    args[args.index(REWARD)] = "format"
    with FakeAnthropic(answer=slow_answer) as server:
        env = dict(os.environ, ANTHROPIC_API_KEY=server.api_key, ANTHROPIC_BASE_URL=server.url,
                   PYTHONPATH=os.pathsep.join([str(Path(__file__).parent.parent), str(Path(__file__).parent)]))
        proc = subprocess.Popen([sys.executable, "-m", "chainforge", *args], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        journal = out / "expansions.jsonl"
        try:
            deadline = time.monotonic() + 300
            while paid(journal) < 2:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "nothing was grounded"
                time.sleep(0.02)
        finally:
            proc.kill()
            proc.communicate()
        paid_before = paid(journal)
        # requests the killed process had already sent are still read (one at a time) after its death
        settled, seen = time.monotonic(), len(server.requests)
        while len(served) < len(server.requests) or time.monotonic() - settled < 1.0:
            if len(server.requests) != seen:
                settled, seen = time.monotonic(), len(server.requests)
            time.sleep(0.05)
        first_run = len(server.requests)
        r = subprocess.run([sys.executable, "-m", "chainforge", *args], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        second_run = len(server.requests) - first_run
    m = json.loads((out / "chainforge.json").read_text())["metrics"]
    total = m["expanded_steps"] + m["expansion_failures"]
    assert paid_before > 0 and total > paid_before
    assert second_run == total - paid_before  # the journaled groundings were not asked again
    assert_grounded_only_where_uncertain(datasets.load_from_disk(str(out)))


def test_distill_grounds_the_kept_traces_before_training(cli, tiny_model, tmp_path, anthropic_api):
    rows = [{"prompt": f"What is {a} + {b}?"} for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "distill"
    r = cli("distill", "--teacher", tiny_model, "--student", tiny_model, "--data", data, "--output", out,
            "--eval-fraction", "0", "--max-steps", "1", "--max-new-tokens", "24", "--temperature", "1.0",
            "--batch-size", "2", *GROUND)
    assert r.exit_code == 0, r.stderr
    traces = list(datasets.load_from_disk(str(out / "traces")))
    grounded = assert_grounded_only_where_uncertain(traces)
    assert grounded > 0 and len(anthropic_api.requests) == grounded
    m = json.loads((out / "chainforge.json").read_text())["metrics"]
    assert m["expanded_steps"] == grounded and m["expansion_cost_usd"] > 0


def test_reject_with_expander_batch_sends_one_batch_at_half_price(cli, tiny_model, data, tmp_path,
                                                                 anthropic_batches):
    server = anthropic_batches
    out = tmp_path / "out"
    r = cli(*reject_args(tiny_model, data, out, "--min-reward", 0, "--keep", "all-passing", *GROUND, "--expander-batch",
                         "--poll-interval", "0.01"))
    assert r.exit_code == 0, r.stderr
    assert len(server.created) == 1, r.stderr
    assert not [q for q in server.requests if q["path"].rstrip("/") == "/v1/messages"]
    grounded = assert_grounded_only_where_uncertain(datasets.load_from_disk(str(out)))
    m = json.loads((out / "chainforge.json").read_text())["metrics"]
    assert grounded > 0 and m["expanded_steps"] == grounded and m["expansion_batches"] == 1
    full = (m["expansion_input_tokens"] * 2.0 + m["expansion_output_tokens"] * 10.0) / 1e6  # claude-sonnet-5-5
    assert m["expansion_cost_usd"] == pytest.approx(full / 2, abs=1e-6)  # the manifest keeps 6 decimals


def test_rewrite_puts_groundings_in_uncertain_steps_only():
    steps, own, summary = trace_parts("<reasoning_process>\n<think>Add the numbers.</think>\n<think>Maybe it is 4."
                                      "\n<explanation>own note</explanation>\n</think>\n<think>Done."
                                      "\n<explanation>stray</explanation>\n</think>\n</reasoning_process>\n"
                                      "<summary>\n4\n</summary>")
    flagged = [RULE.is_uncertain(s) for s in steps]
    assert flagged == [True, True, False]
    text = rewrite(steps, own, flagged, Grounded(["2 + 2 = 4.", None, None]), summary)
    assert parse_super_cot(text).expansions == ["2 + 2 = 4.", "own note", None]
    plain = trace_parts("first line of thought\nsecond line \\boxed{7}")
    assert plain[0] == ["first line of thought", "second line \\boxed{7}"] and plain[2] == "7"


def test_bad_expander_options_are_exit_2_and_nothing_created(cli, tiny_model, data, tmp_path, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    out = tmp_path / "out"
    r = cli(*reject_args(tiny_model, data, out, "--expander", "anthropic"))
    assert r.exit_code == 2 and "ANTHROPIC_API_KEY is not set" in r.stderr and not out.exists()
    r = cli(*reject_args(tiny_model, data, out, "--expander-batch"))
    assert r.exit_code == 2 and "--expander-batch" in r.stderr and not out.exists()
    r = cli(*reject_args(tiny_model, data, out, "--price", "claude=1,2"))
    assert r.exit_code == 2 and "--price" in r.stderr and not out.exists()
    r = cli("distill", "--teacher", tiny_model, "--student", tiny_model, "--data", data, "--output", out,
            "--method", "logits", "--expander", "local")
    assert r.exit_code == 2 and "--method traces" in r.stderr and not out.exists()
