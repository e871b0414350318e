"""collect end to end: the real CLI against real HTTP servers on 127.0.0.1 (tests/helpers/fake_apis.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.cli import assert_exit_2
from helpers.files import manifest, write_jsonl

from chainforge.formats import parse_super_cot


def prompts_file(tmp_path: Path, n: int, answer: str = "42") -> Path:
    return write_jsonl(tmp_path / "prompts.jsonl",
                       [{"prompt": f"Q{i}: what is 6 times 7?", "answer": answer} for i in range(n)])


def rows_of(out: Path) -> list[dict]:
    from datasets import load_from_disk

    return list(load_from_disk(str(out)))


def failed_lines(out: Path) -> list[dict]:
    p = out / "failed.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def assert_no_secret(out: Path, *secrets: str) -> None:
    for f in out.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            for s in secrets:
                assert s.encode() not in data, f"{s} leaked into {f}"


# ---- the happy path ---------------------------------------------------------------------------------

def test_uncertain_steps_are_expanded_and_rows_follow_the_contract(cli, tmp_path, deepseek, anthropic_api):
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 3), "--output", out, "--max-new-tokens", 2048)
    assert r.exit_code == 0, r.stderr
    first = r.stderr.strip().splitlines()[0]
    assert "teacher deepseek" in first and "expander anthropic" in first
    rows = rows_of(out)
    assert [row["prompt"] for row in rows] == [f"Q{i}: what is 6 times 7?" for i in range(3)]
    for row in rows:
        assert len(row["steps"]) == 3 and row["uncertain"] == [False, True, False]
        assert row["expansions"][0] is None and row["expansions"][2] is None
        assert row["expansions"][1].startswith("The step is valid")
        parsed = parse_super_cot(row["text"])
        assert parsed.steps == row["steps"] and parsed.expansions == row["expansions"] and parsed.summary == "42"
        assert row["messages"] == [{"role": "user", "content": row["prompt"]},
                                   {"role": "assistant", "content": row["text"]}]
        assert row["teacher_answer"] == "42" and row["reference"] == "42" and row["correct"] is True
        assert row["reasoning"].startswith("First, restate")
        assert row["usage"]["teacher"]["reasoning"] > 0 and row["usage"]["teacher"]["cache_hit"] == 4
        assert row["usage"]["expander"]["completion"] > 0 and row["usage"]["cost_usd"] > 0
    m = manifest(out)
    assert m["status"] == "complete"
    assert set(m["metrics"]) == {"prompts", "rows", "failed", "expanded_steps", "uncertain_steps", "correct_rate",
                                 "cost_usd", "requests", "retries", "expansion_input_tokens",
                                 "expansion_output_tokens", "expansion_cost_usd"}
    assert m["metrics"]["rows"] == 3 and m["metrics"]["failed"] == 0
    assert m["metrics"]["expanded_steps"] == 3 and m["metrics"]["uncertain_steps"] == 3
    assert m["metrics"]["requests"] == 6 and m["metrics"]["retries"] == 0
    assert m["metrics"]["correct_rate"] == 1.0
    assert abs(m["metrics"]["cost_usd"] - sum(r["usage"]["cost_usd"] for r in rows)) < 1e-6
    # what the teacher was sent: one user turn, never reasoning_content, nothing the reasoner rejects
    for req in deepseek.requests:
        body = req["json"]
        assert req["path"] == "/chat/completions"
        assert req["headers"]["authorization"] == f"Bearer {deepseek.api_key}"
        assert [m["role"] for m in body["messages"]] == ["user"]
        assert "reasoning_content" not in json.dumps(body)
        assert "logprobs" not in body and body["model"] == "deepseek-flash" and body["max_tokens"] == 2048
        assert body["thinking"] == {"type": "enabled"} and "reasoning_effort" not in body
    # the expander: the SDK's Messages API, the current Sonnet, thinking off as Sonnet 5.5 allows it
    # (its Models API capabilities say `between_tools`), max_tokens 512, one per uncertain step
    assert len(anthropic_api.requests) == 3
    for req in anthropic_api.requests:
        assert req["path"] == "/v1/messages"
        assert req["json"]["model"] == "claude-sonnet-5-5" and req["json"]["max_tokens"] == 512
        assert req["json"]["thinking"] == {"type": "between_tools"}
        assert not {"temperature", "top_p", "top_k"} & set(req["json"])
        assert "Maybe the result is 6 times 7" in req["json"]["messages"][0]["content"]
    # the preflight: one model look-up per API, before the first paid request
    assert [q["path"] for q in deepseek.lookups] == ["/models"]
    assert [q["path"] for q in anthropic_api.lookups] == ["/v1/models/claude-sonnet-5-5"]
    assert deepseek.lookups[0]["t"] < deepseek.requests[0]["t"]
    assert_no_secret(out, deepseek.api_key, anthropic_api.api_key)


def test_expander_defaults_to_none_without_a_key_and_says_so(cli, tmp_path, deepseek):
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 2), "--output", out)
    assert r.exit_code == 0, r.stderr
    assert "expander none" in r.stderr.splitlines()[0] or "expander none" in r.stderr.split("\n\n")[0]
    rows = rows_of(out)
    assert all(row["uncertain"] == [False, True, False] and row["expansions"] == [None] * 3 for row in rows)
    assert manifest(out)["metrics"]["expanded_steps"] == 0


def test_refused_or_failed_expansions_leave_the_step_unexpanded(cli, tmp_path, deepseek, anthropic_api):
    anthropic_api.answer = lambda text: "I'm sorry, I can't help with that." if "Q0:" in text else "Fine: 6*7=42."
    anthropic_api.plan("Q1:", "400")
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 3), "--output", out)
    assert r.exit_code == 0, r.stderr
    rows = rows_of(out)
    assert rows[0]["expansions"] == [None] * 3 and rows[1]["expansions"] == [None] * 3
    assert rows[2]["expansions"][1] == "Fine: 6*7=42."
    assert manifest(out)["metrics"]["expanded_steps"] == 1


def test_max_expansions_caps_grounding_per_trace(cli, tmp_path, deepseek, anthropic_api):
    deepseek.answer = lambda p: ("Maybe A.\n\nPerhaps B.\n\nI guess C, not sure.\n\nSo 42.", "42")
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 1), "--output", out, "--max-expansions", 1)
    assert r.exit_code == 0, r.stderr
    (row,) = rows_of(out)
    assert row["uncertain"] == [True, True, True, False]
    assert [e is not None for e in row["expansions"]] == [False, False, True, False]  # the most hedged one


# ---- retries and failures ---------------------------------------------------------------------------

def test_transient_faults_are_retried_until_every_prompt_is_a_row(cli, tmp_path, deepseek):
    faults = ["429:retry-after=1", "500", "503", "529", "empty", "nonjson", "blank", "drop"]
    for i, fault in enumerate(faults):
        deepseek.plan(f"Q{i}: what is 6 times 7?", fault)
    deepseek.plan(f"Q{len(faults)}: what is 6 times 7?", "blank")  # blank lines on the first attempt: no retry
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, len(faults) + 1), "--output", out)
    assert r.exit_code == 0, r.stderr
    assert len(rows_of(out)) == len(faults) + 1 and failed_lines(out) == []
    m = manifest(out)["metrics"]
    assert m["retries"] == len(faults) - 1 and m["requests"] == 2 * len(faults)  # 'blank' succeeds at once
    times = [q["t"] for q in deepseek.requests if q["json"]["messages"][-1]["content"].startswith("Q0:")]
    assert times[1] - times[0] >= 0.9  # Retry-After: 1 honoured


def test_a_400_fails_only_that_prompt(cli, tmp_path, deepseek):
    deepseek.plan("Q1: what is 6 times 7?", "400")
    deepseek.plan("Q2: what is 6 times 7?", "422")
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 4), "--output", out)
    assert r.exit_code == 0, r.stderr
    assert [row["prompt"][:2] for row in rows_of(out)] == ["Q0", "Q3"]
    failed = failed_lines(out)
    assert sorted((f["prompt"][:2], f["status_code"]) for f in failed) == [("Q1", 400), ("Q2", 422)]
    assert all(set(f) == {"id", "prompt", "reason", "status_code"} for f in failed)
    assert deepseek.attempts["Q1: what is 6 times 7?"] == 1  # never retried
    m = manifest(out)
    assert m["status"] == "complete" and m["metrics"]["failed"] == 2 and m["metrics"]["rows"] == 2


def test_retries_exhausted_for_one_prompt_fail_it(cli, tmp_path, deepseek):
    deepseek.plan("Q1: what is 6 times 7?", "500", "500", "500")
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 3), "--output", out, "--max-retries", 2)
    assert r.exit_code == 0, r.stderr
    (failed,) = failed_lines(out)
    assert failed["prompt"].startswith("Q1") and "retries exhausted" in failed["reason"]
    assert failed["status_code"] == 500 and deepseek.attempts["Q1: what is 6 times 7?"] == 3


def test_an_api_that_is_down_stops_the_run_without_failing_prompts(cli, tmp_path, deepseek):
    deepseek.always = "503"
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 8), "--output", out, "--max-retries", 1)
    assert r.exit_code == 1
    assert "looks down" in r.stderr
    assert failed_lines(out) == [] and manifest(out)["status"] == "incomplete"
    deepseek.always = None
    r = cli("collect", "--prompts", prompts_file(tmp_path, 8), "--output", out, "--max-retries", 1)
    assert r.exit_code == 0, r.stderr
    assert len(rows_of(out)) == 8


def test_402_stops_the_run_and_a_rerun_finishes_without_paying_twice(cli, tmp_path, deepseek):
    deepseek.plan("Q3: what is 6 times 7?", "402")
    out = tmp_path / "out"
    args = ["collect", "--prompts", prompts_file(tmp_path, 6), "--output", out, "--concurrency", 1]
    r = cli(*args)
    assert r.exit_code == 1
    assert "402" in r.stderr and "rerun the same command" in r.stderr
    assert manifest(out)["status"] == "incomplete"
    journaled = [json.loads(line)["prompt"] for line in (out / "journal.jsonl").read_text().splitlines()]
    assert journaled == [f"Q{i}: what is 6 times 7?" for i in range(3)]
    r = cli(*args)
    assert r.exit_code == 0, r.stderr
    assert len(rows_of(out)) == 6
    for i in range(6):
        assert deepseek.attempts[f"Q{i}: what is 6 times 7?"] == (2 if i == 3 else 1)


def test_401_stops_the_run_naming_the_key(cli, tmp_path, deepseek, monkeypatch):
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-wrong")
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 2), "--output", out)
    assert r.exit_code == 1
    assert "401" in r.stderr and "DEEPSEEK_API_KEY" in r.stderr
    assert_no_secret(out, "sk-wrong")


def test_max_cost_stops_sending_and_a_higher_budget_resumes(cli, tmp_path, deepseek):
    # 1 USD per 1k output tokens makes a row cost a few cents; the budget stops after a few rows.
    price = ["--price", "deepseek-flash=0,0,1000"]
    out = tmp_path / "out"
    base = ["collect", "--prompts", prompts_file(tmp_path, 10), "--output", out, "--concurrency", 1, *price,
            "--max-new-tokens", 50]
    r = cli(*base, "--max-cost", 0.1)
    assert r.exit_code == 1 and "--max-cost" in r.stderr
    m = manifest(out)
    assert m["status"] == "incomplete" and 0 < m["metrics"]["cost_usd"] <= 0.1
    done_first = len((out / "journal.jsonl").read_text().splitlines())
    assert 0 < done_first < 10
    r = cli(*base, "--max-cost", 100)
    assert r.exit_code == 0, r.stderr
    assert len(rows_of(out)) == 10 and sum(deepseek.attempts.values()) == 10


def test_retry_failed_retries_only_failed_prompts(cli, tmp_path, deepseek):
    deepseek.plan("Q1: what is 6 times 7?", "400")
    out = tmp_path / "out"
    args = ["collect", "--prompts", prompts_file(tmp_path, 3), "--output", out]
    assert cli(*args).exit_code == 0
    assert len(failed_lines(out)) == 1
    r = cli(*args)
    assert r.exit_code == 2 and "--overwrite" in r.stderr  # complete: a plain rerun refuses
    r = cli(*args, "--retry-failed")
    assert r.exit_code == 0, r.stderr
    assert len(rows_of(out)) == 3 and failed_lines(out) == []
    assert dict(deepseek.attempts) == {"Q0: what is 6 times 7?": 1, "Q1: what is 6 times 7?": 2,
                                       "Q2: what is 6 times 7?": 1}


def test_drop_incorrect_keeps_only_matching_rows(cli, tmp_path, deepseek):
    deepseek.answer = lambda p: ("Compute it.\n\nDone.", "41" if p.startswith("Q0") else "\\boxed{42}")
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 3), "--output", out, "--drop-incorrect")
    assert r.exit_code == 0, r.stderr
    rows = rows_of(out)
    assert [row["prompt"][:2] for row in rows] == ["Q1", "Q2"] and all(row["correct"] for row in rows)
    out2 = tmp_path / "out2"
    assert cli("collect", "--prompts", prompts_file(tmp_path, 3), "--output", out2).exit_code == 0
    assert [row["correct"] for row in rows_of(out2)] == [False, True, True]


def test_openai_teacher_reads_a_leading_think_block(cli, tmp_path, openai_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", openai_server.api_key)
    openai_server.answer = lambda p: ("", "<think>Six sevens.\n\nI think that is 42.</think>\nThe answer is 42.")
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 2), "--output", out, "--teacher", "openai",
            "--teacher-model", "r1-distill", "--teacher-base-url", openai_server.url)
    assert r.exit_code == 0, r.stderr
    row = rows_of(out)[0]
    assert row["steps"] == ["Six sevens.", "I think that is 42."] and row["uncertain"] == [False, True]
    assert row["teacher_answer"] == "The answer is 42." and row["correct"] is True
    assert_no_secret(out, openai_server.api_key)


def test_changed_options_refuse_to_resume(cli, tmp_path, deepseek):
    deepseek.plan("Q1: what is 6 times 7?", "402")
    out = tmp_path / "out"
    args = ["collect", "--prompts", prompts_file(tmp_path, 3), "--output", out, "--concurrency", 1]
    assert cli(*args).exit_code == 1
    r = cli(*args, "--max-expansions", 1)
    assert r.exit_code == 2 and "max_expansions" in r.stderr


def test_config_file_gives_prices_and_concurrency(cli, tmp_path, deepseek):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("concurrency: 2\nprice: ['deepseek-flash=1000,0,0']\n")
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 2), "--output", out, "--config", cfg)
    assert r.exit_code == 0, r.stderr
    rows = rows_of(out)
    assert rows[0]["usage"]["cost_usd"] == pytest.approx((rows[0]["usage"]["teacher"]["prompt"] - 4) * 1000 / 1e6)


# ---- bad input: exit 2, one line, nothing created ---------------------------------------------------

BAD = [
    ([], {"DEEPSEEK_API_KEY": None}, "DEEPSEEK_API_KEY"),
    (["--expander", "anthropic"], {"ANTHROPIC_API_KEY": None}, "ANTHROPIC_API_KEY"),
    (["--prompt-column", "question"], {}, "no column 'question'"),
    (["--teacher-base-url", "ftp://example.com"], {}, "--teacher-base-url"),
    (["--teacher-base-url", "http://"], {}, "--teacher-base-url"),
    ([], {"DEEPSEEK_BASE_URL": "api.deepseek.com"}, "DEEPSEEK_BASE_URL"),
    (["--concurrency", "0"], {}, "--concurrency must be at least 1"),
    (["--concurrency", "-3"], {}, "--concurrency must be at least 1"),
    (["--price", "deepseek-flash=0.30,cheap,1.20"], {}, "CACHE_HIT must be a non-negative number"),
    (["--price", "deepseek-flash"], {}, "MODEL=INPUT,CACHE_HIT,OUTPUT"),
    (["--teacher", "gpt"], {}, "--teacher 'gpt'"),
    (["--expander", "gemini"], {}, "--expander 'gemini'"),
    (["--teacher", "openai"], {"OPENAI_BASE_URL": None}, "--teacher-base-url"),
    (["--max-cost", "0"], {}, "--max-cost"),
    (["--marker-domain", "poetry"], {}, "--marker-domain"),
    (["--retry-failed"], {}, "--retry-failed needs an existing"),
    (["--teacher", "local", "--teacher-model", "/nonexistent/model"], {}, "--teacher-model"),
    (["--teacher", "openai", "--teacher-base-url", "http://127.0.0.1:9/v1"], {}, "needs --teacher-model"),
    (["--expander", "anthropic"], {"ANTHROPIC_API_KEY": "sk-a", "ANTHROPIC_BASE_URL": "localhost:9"},
     "ANTHROPIC_BASE_URL"),
    (["--expander", "openai"], {"OPENAI_BASE_URL": None}, "--expander openai needs OPENAI_BASE_URL"),
    (["--expander", "openai"], {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}, "needs --expander-model"),
]


@pytest.mark.parametrize("extra,env,needle", BAD, ids=[b[2][:30] for b in BAD])
def test_bad_input_exits_2_and_creates_nothing(cli, tmp_path, monkeypatch, extra, env, needle):
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-present")
    for k, v in env.items():
        monkeypatch.delenv(k, raising=False) if v is None else monkeypatch.setenv(k, v)
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 2), "--output", out, *extra)
    assert_exit_2(r, needle, output=out)


def test_missing_deepseek_key_suggests_the_local_teacher(cli, tmp_path):
    r = cli("collect", "--prompts", prompts_file(tmp_path, 1), "--output", tmp_path / "o")
    assert r.exit_code == 2 and "--teacher local" in r.stderr


def test_an_empty_prompt_row_is_bad_input(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-present")
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "fine"}, {"prompt": "  "}])
    r = cli("collect", "--prompts", data, "--output", tmp_path / "o")
    assert r.exit_code == 2 and "row 1" in r.stderr and not (tmp_path / "o").exists()


# ---- the local teacher --------------------------------------------------------------------------------

def test_local_teacher_on_a_tiny_model_writes_valid_rows(cli, tmp_path, tiny_model):
    out = tmp_path / "out"
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"What is {i} + 1?", "answer": str(i + 1)}
                                              for i in range(4)] + [{"prompt": "No answer column here"}])
    r = cli("collect", "--prompts", data, "--output", out, "--teacher", "local", "--teacher-model", tiny_model,
            "--max-new-tokens", 24, "--expander", "local")
    assert r.exit_code == 0, r.stderr
    rows = rows_of(out)
    assert len(rows) + len(failed_lines(out)) == 5
    for row in rows:
        parsed = parse_super_cot(row["text"])  # valid even when the model babbles
        assert parsed.steps == row["steps"] and all(s.strip() for s in row["steps"])
        assert parsed.summary == row["teacher_answer"].strip()
        assert len(row["uncertain"]) == len(row["expansions"]) == len(row["steps"])
        assert row["usage"]["cost_usd"] == 0 and row["usage"]["teacher"]["completion"] > 0
    assert [row["reference"] for row in rows if row["prompt"].startswith("No")] in ([None], [])
    assert manifest(out)["status"] == "complete"


def test_rows_come_out_in_input_order_whatever_order_they_finished_in(cli, tmp_path, deepseek):
    # the first prompts finish last (a 429 with Retry-After): the journal holds them out of order,
    # the dataset must not
    deepseek.plan("Q0: what is 6 times 7?", "429:retry-after=1")
    deepseek.plan("Q1: what is 6 times 7?", "429:retry-after=1")
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 4), "--output", out)
    assert r.exit_code == 0, r.stderr
    journal_order = [json.loads(line)["prompt"][:2] for line in (out / "journal.jsonl").read_text().splitlines()]
    assert journal_order[:2] == ["Q2", "Q3"]  # the test really exercises out-of-order finishing
    assert [row["prompt"][:2] for row in rows_of(out)] == ["Q0", "Q1", "Q2", "Q3"]


# ---- secrets ------------------------------------------------------------------------------------------

def test_url_credentials_are_sent_as_basic_auth_and_never_shown_or_recorded(cli, tmp_path, openai_server, monkeypatch):
    import base64

    from chainforge.providers.resolve import resolve_teacher
    from chainforge.config import Options

    openai_server.basic_auth = ("bob", "s3cret-pw")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    url = f"http://bob:s3cret-pw@127.0.0.1:{openai_server.port}/v1"
    out = tmp_path / "out"
    args = ["collect", "--prompts", prompts_file(tmp_path, 2), "--output", out, "--teacher", "openai",
            "--teacher-model", "r1", "--teacher-base-url", url]
    r = cli(*args)
    assert r.exit_code == 0, r.stderr
    token = base64.b64encode(b"bob:s3cret-pw").decode()
    assert {req["headers"]["authorization"] for req in openai_server.requests} == {f"Basic {token}"}
    assert "s3cret-pw" not in r.stderr + r.stdout and "bob:***@" in r.stderr
    assert "warning" not in r.stderr  # loopback: nothing crosses a network
    assert manifest(out)["config"]["teacher_base_url"] == f"http://bob:***@127.0.0.1:{openai_server.port}/v1"
    assert_no_secret(out, "s3cret-pw", token)
    source = resolve_teacher(Options(teacher="openai", teacher_model="r1", teacher_base_url=url))
    assert "s3cret-pw" not in repr(source) and "s3cret-pw" not in source.describe()
    r = cli(*args, "--overwrite")  # the masked URL recorded does not stop the same command later
    assert r.exit_code == 0, r.stderr


@pytest.mark.parametrize("args,env", [
    ([], {"DEEPSEEK_BASE_URL": "https://bob:s3cret-pw@api.example.com"}),
    (["--teacher", "openai", "--teacher-model", "r1", "--teacher-base-url", "http://bob:s3cret-pw@127.0.0.1:9/v1"],
     {"OPENAI_API_KEY": "sk-o"}),
    (["--expander", "anthropic"], {"ANTHROPIC_API_KEY": "sk-a", "ANTHROPIC_BASE_URL": "https://bob:s3cret-pw@a.example"}),
], ids=["deepseek", "openai", "anthropic"])
def test_url_credentials_next_to_a_key_are_refused_without_showing_them(cli, tmp_path, monkeypatch, args, env):
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-present")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 1), "--output", out, *args)
    assert r.exit_code == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "carries credentials" in lines[0]
    assert "bob:***@" in lines[0] and "s3cret-pw" not in r.stderr + r.stdout and not out.exists()


@pytest.mark.parametrize("env,value,args", [
    ("DEEPSEEK_API_KEY", "sk-good\nX-Injected: yes", []),
    ("DEEPSEEK_API_KEY", "sk-a\rb", []),
    ("DEEPSEEK_API_KEY", "sk-a\x1b[2Jb", []),
    ("DEEPSEEK_API_KEY", "sk-a\u00e9b", []),
    ("OPENAI_API_KEY", "sk-a\x7fb", ["--teacher", "openai", "--teacher-model", "r1"]),
    ("ANTHROPIC_API_KEY", "sk-a\tb", ["--expander", "anthropic"]),
], ids=["newline", "cr", "escape", "non-ascii", "del", "tab"])
def test_a_key_with_a_control_character_is_refused_before_any_request(cli, tmp_path, deepseek, monkeypatch, env,
                                                                      value, args):
    monkeypatch.setenv("OPENAI_BASE_URL", deepseek.url)
    monkeypatch.setenv(env, value)
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 1), "--output", out, *args)
    assert r.exit_code == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"Error: {env} holds a"), r.stderr
    assert "sk-a" not in r.stderr and "X-Injected" not in r.stderr and "Traceback" not in r.stderr
    assert deepseek.requests == [] and not out.exists()


def test_a_key_over_plain_http_to_another_host_gets_a_warning(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-key")
    base = ["collect", "--prompts", prompts_file(tmp_path, 1), "--output", tmp_path / "o", "--teacher", "openai",
            "--teacher-model", "r1", "--prompt-column", "missing"]  # stops (exit 2) before any request
    r = cli(*base, "--teacher-base-url", "http://10.1.2.3:8000/v1")
    assert r.exit_code == 2
    warning = next(line for line in r.stderr.splitlines() if "warning" in line)
    assert "OPENAI_API_KEY" in warning and "10.1.2.3" in warning and "plain http://" in warning
    assert "sk-openai-key" not in r.stderr
    for url in ("https://10.1.2.3:8000/v1", "http://localhost:8000/v1", "http://[::1]:8000/v1"):
        assert "warning" not in cli(*base, "--teacher-base-url", url).stderr


# ---- a local expander behind 32 requests in flight --------------------------------------------------

def test_local_expander_at_concurrency_32_loads_one_model_and_decodes_on_it_one_call_at_a_time(
        cli, tmp_path, openai_server, tiny_model, monkeypatch):
    import threading

    import chainforge.models as models
    import chainforge.sampling as sampling

    real_load, real_generate = models.load_model, sampling.generate
    loads, prompts_decoded, lock = [], [], threading.Lock()
    active = peak = 0

    def counting_load(*a, **k):
        loads.append(a[0])
        return real_load(*a, **k)

    def counting_generate(model, tok, prompts, *a, **k):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
            prompts_decoded.append(len(prompts))
        try:
            return real_generate(model, tok, prompts, *a, **k)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(models, "load_model", counting_load)
    monkeypatch.setattr(sampling, "generate", counting_generate)
    monkeypatch.setenv("OPENAI_API_KEY", openai_server.api_key)
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 40), "--output", out, "--teacher", "openai",
            "--teacher-model", "r1", "--teacher-base-url", openai_server.url, "--expander", "local",
            "--expander-model", tiny_model, "--concurrency", 32, "--max-new-tokens", 8)
    assert r.exit_code == 0, r.stderr
    rows = rows_of(out)
    assert len(rows) == 40 and failed_lines(out) == []
    assert len(loads) == 1  # one model in memory, however many rows asked for it at once
    assert peak == 1  # never two decodes on the one model (and its tokenizer) at the same time
    assert sum(prompts_decoded) == 40  # each row's one uncertain step, batched across rows
    assert all(row["uncertain"] == [False, True, False] for row in rows)


def test_url_password_never_reaches_run_json_or_a_config_repr_and_the_rerun_skips(cli, tmp_path, openai_server,
                                                                                 monkeypatch):
    import json

    import yaml

    from chainforge.stages.collect import CollectConfig

    openai_server.basic_auth = ("bob", "s3cret-pw")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    url = f"http://bob:s3cret-pw@127.0.0.1:{openai_server.port}/v1"
    config = CollectConfig(prompts="p.jsonl", output="o", teacher="openai", teacher_base_url=url)
    assert "s3cret-pw" not in repr(config) and "bob:***@" in repr(config)
    assert config.redacted()["teacher_base_url"] == f"http://bob:***@127.0.0.1:{openai_server.port}/v1"

    run_dir = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"run_dir": str(run_dir), "prompts": str(prompts_file(tmp_path, 2)), "stages": [
        {"name": "collect", "command": "collect", "teacher": "openai", "teacher_model": "r1",
         "teacher_base_url": url}]}))
    r = cli("run", recipe)
    assert r.exit_code == 0, r.stderr
    assert "s3cret-pw" not in (run_dir / "run.json").read_text() + r.stderr + r.stdout
    assert_no_secret(run_dir, "s3cret-pw")
    sent = len(openai_server.requests)
    r = cli("run", recipe)  # the manifest's masked URL is the same option: nothing is redone or re-paid
    assert r.exit_code == 0, r.stderr
    assert len(openai_server.requests) == sent
    state = json.loads((run_dir / "run.json").read_text())
    assert state["stages"]["collect"]["status"] == "skipped (complete)"
