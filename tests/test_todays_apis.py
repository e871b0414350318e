"""collect against DeepSeek V4 and Claude 5.x as they answer today (the loopback fakes in
tests/helpers/fake_apis.py follow the providers' pages, docs/collect-http.md and docs/grounding.md):
current default models, retired names refused before any request, thinking and effort sent, usage
priced, thinking blocks before the text, the preflight, and fail-fast on a systematic 4xx."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from helpers.cli import assert_exit_2
from helpers.fake_apis import CLAUDE, FakeAnthropic, FakeDeepSeek
from helpers.files import manifest, write_jsonl


def prompts_file(tmp_path: Path, n: int) -> Path:
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Q{i}: what is 6 times 7?", "answer": "42"}
                                                    for i in range(n)])


def rows_of(out: Path) -> list[dict]:
    from datasets import load_from_disk

    return list(load_from_disk(str(out)))


def failed_lines(out: Path) -> list[dict]:
    p = out / "failed.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


# ---- current models ----------------------------------------------------------------------------------

def test_the_default_teacher_and_expander_are_models_the_providers_serve_today():
    from chainforge.providers.expander import DEFAULT_ANTHROPIC_MODEL
    from chainforge.providers.pricing import DEFAULT_PRICES
    from chainforge.providers.resolve import DEEPSEEK_MODEL, DEEPSEEK_RETIRED

    assert DEEPSEEK_MODEL == "deepseek-flash" and DEEPSEEK_MODEL in FakeDeepSeek.MODELS
    assert DEEPSEEK_MODEL not in DEEPSEEK_RETIRED
    assert DEFAULT_ANTHROPIC_MODEL == "claude-sonnet-5-5" and DEFAULT_ANTHROPIC_MODEL in CLAUDE
    assert {DEEPSEEK_MODEL, DEFAULT_ANTHROPIC_MODEL} <= set(DEFAULT_PRICES)  # both are priced
    assert not set(DEEPSEEK_RETIRED) & set(DEFAULT_PRICES)


@pytest.mark.parametrize("model,replacement", [("deepseek-reasoner", "deepseek-flash (thinking is on"),
                                               ("deepseek-chat", "deepseek-flash with --no-thinking")])
def test_a_retired_deepseek_name_is_exit_2_before_any_request(cli, tmp_path, deepseek, model, replacement):
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 3), "--output", out, "--teacher-model", model)
    assert_exit_2(r, f"--teacher-model {model}", "retired", replacement, output=out)
    assert deepseek.requests == [] and deepseek.lookups == []


def test_the_fake_deepseek_answers_a_retired_name_as_deepseek_does(deepseek):
    """What a client that still sends the retired name meets: 400 "Model Not Exist" (the fake must
    say so, or the test above would prove nothing)."""
    from chainforge.providers.chat import ChatAPI, Counters, PromptFailed
    from chainforge.providers.http import HttpClient

    async def ask():
        api = ChatAPI(HttpClient(deepseek.url, {"Authorization": f"Bearer {deepseek.api_key}"}), "deepseek-reasoner",
                      "DeepSeek", "DEEPSEEK_API_KEY", 0, Counters())
        try:
            return await api.complete([{"role": "user", "content": "hi"}])
        finally:
            await api.client.aclose()

    with pytest.raises(PromptFailed) as failure:
        asyncio.run(ask())
    assert failure.value.status_code == 400 and "Model Not Exist" in failure.value.reason


def test_an_openai_server_may_serve_a_name_deepseek_retired(cli, tmp_path, openai_server):
    """The retired names are DeepSeek's: on `--teacher openai` a model name is the server's own."""
    openai_server.served_models = ("deepseek-reasoner",)
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 2), "--output", out, "--teacher", "openai",
            "--teacher-model", "deepseek-reasoner", "--teacher-base-url", openai_server.url, "--expander", "none")
    assert r.exit_code == 0, r.stderr
    assert {q["json"]["model"] for q in openai_server.requests} == {"deepseek-reasoner"}
    assert all("thinking" not in q["json"] for q in openai_server.requests)  # nothing it did not ask for


def test_a_legacy_deepseek_name_still_served_runs_with_a_note(cli, tmp_path, deepseek):
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 2), "--output", out, "--teacher-model", "deepseek-v4-flash",
            "--expander", "none")
    assert r.exit_code == 0, r.stderr
    assert "deepseek-v4-flash is a legacy DeepSeek name" in r.stderr and "deepseek-flash" in r.stderr
    assert len(rows_of(out)) == 2


# ---- thinking and effort -----------------------------------------------------------------------------

def test_thinking_and_reasoning_effort_reach_the_server(cli, tmp_path, deepseek):
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 2), "--output", out, "--expander", "none",
            "--reasoning-effort", "max")
    assert r.exit_code == 0, r.stderr
    for q in deepseek.requests:
        assert q["json"]["thinking"] == {"type": "enabled"} and q["json"]["reasoning_effort"] == "max"
    rows = rows_of(out)
    assert all("Checking once more" in row["reasoning"] for row in rows)  # the fake thought longer at max
    assert manifest(out)["config"]["reasoning_effort"] == "max"

    off = tmp_path / "off"
    sent = len(deepseek.requests)
    r = cli("collect", "--prompts", prompts_file(tmp_path, 2), "--output", off, "--expander", "none", "--no-thinking")
    assert r.exit_code == 0, r.stderr
    for q in deepseek.requests[sent:]:
        assert q["json"]["thinking"] == {"type": "disabled"} and "reasoning_effort" not in q["json"]
    assert all(row["usage"]["teacher"]["reasoning"] == 0 for row in rows_of(off))


def test_an_openai_teacher_gets_the_thinking_fields_only_when_asked(cli, tmp_path, openai_server):
    base = ["collect", "--prompts", prompts_file(tmp_path, 1), "--teacher", "openai", "--teacher-model", "r1",
            "--teacher-base-url", openai_server.url, "--expander", "none"]
    assert cli(*base, "--output", tmp_path / "a").exit_code == 0
    assert not {"thinking", "reasoning_effort"} & set(openai_server.requests[-1]["json"])
    assert cli(*base, "--output", tmp_path / "b", "--thinking", "--reasoning-effort", "high").exit_code == 0
    body = openai_server.requests[-1]["json"]
    assert body["thinking"] == {"type": "enabled"} and body["reasoning_effort"] == "high"


@pytest.mark.parametrize("args,fragments", [
    (["--no-thinking", "--reasoning-effort", "max"], ["--reasoning-effort", "--no-thinking"]),
    (["--teacher", "local", "--thinking"], ["--teacher local"]),
    (["--reasoning-effort", "low"], ["--reasoning-effort", "high", "max"]),
], ids=["effort-without-thinking", "local", "not-a-choice"])
def test_thinking_options_that_cannot_apply_are_exit_2(cli, tmp_path, deepseek, args, fragments):
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 1), "--output", out, *args)
    assert_exit_2(r, *fragments, output=out)
    assert deepseek.requests == [] and deepseek.lookups == []


# ---- prices ------------------------------------------------------------------------------------------

def test_deepseek_prices_follow_the_hour_and_count_reasoning_as_output():
    from chainforge.providers.pricing import PRICES_AS_OF, is_peak, price_table

    table = price_table(None)
    usage = {"prompt": 1_000_000, "cache_hit": 400_000, "completion": 1_000_000, "reasoning": 700_000}
    monday_peak = datetime(2026, 12, 7, 2, 30, tzinfo=timezone.utc)  # 10:30 in Beijing, a weekday
    monday_lunch = datetime(2026, 12, 7, 5, 0, tzinfo=timezone.utc)  # 13:00 in Beijing: off-peak
    saturday = datetime(2026, 12, 5, 2, 30, tzinfo=timezone.utc)
    assert [is_peak(t) for t in (monday_peak, monday_lunch, saturday)] == [True, False, False]
    # 600k cache misses at $0.30, 400k hits at $0.006, 1M output (the 700k reasoning tokens among them) at $1.20
    peak = 0.6 * 0.30 + 0.4 * 0.006 + 1.0 * 1.20
    assert table["deepseek-flash"].cost(usage, monday_peak) == pytest.approx(peak)
    assert table["deepseek-flash"].cost(usage, monday_lunch) == pytest.approx(peak / 2)
    assert table["deepseek-flash"].cost(usage, saturday) == pytest.approx(peak / 2)
    assert table["deepseek-v4-pro"].cost(usage, monday_peak) == pytest.approx(0.6 * 1.32 + 0.4 * 0.044 + 3.96)
    assert table["deepseek-flash"].bound(usage) == pytest.approx(peak)  # budgets assume the peak
    assert table["claude-sonnet-5-5"].cost({"prompt": 1_000_000, "completion": 1_000_000}, saturday) == 12.0
    assert PRICES_AS_OF == "2026-12-06"
    # --price overrides with one rate, whatever the hour
    flat = price_table(["deepseek-flash=1,0.5,2"])["deepseek-flash"]
    assert flat.cost(usage, monday_peak) == flat.cost(usage, saturday) == pytest.approx(0.6 + 0.2 + 2)


def test_a_rows_cost_counts_its_cache_hits_and_reasoning_tokens(cli, tmp_path, deepseek):
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 2), "--output", out, "--expander", "none",
            "--price", "deepseek-flash=1,0.5,2")
    assert r.exit_code == 0, r.stderr
    for row in rows_of(out):
        u = row["usage"]["teacher"]  # read from the streamed reply's last event
        assert u["cache_hit"] == 4 and u["reasoning"] > 0 and u["completion"] > u["reasoning"]
        expected = ((u["prompt"] - u["cache_hit"]) * 1 + u["cache_hit"] * 0.5 + u["completion"] * 2) / 1e6
        assert row["usage"]["cost_usd"] == pytest.approx(expected)
    assert manifest(out)["metrics"]["cost_usd"] == pytest.approx(sum(r["usage"]["cost_usd"] for r in rows_of(out)))


# ---- Claude: thinking blocks, stop reasons, refused parameters ---------------------------------------

def ground(server, model: str, capabilities=None, request=None):
    """One grounding through the real AnthropicExpander (the SDK) against the fake; `request`
    replaces the body fields the expander would choose."""
    from chainforge.providers.chat import Counters
    from chainforge.providers.expander import AnthropicExpander

    async def go():
        ex = AnthropicExpander(server.api_key, model, 0, Counters(), capabilities)
        if request is not None:
            ex.fields = request
        try:
            return await ex.expand("What is 6 times 7?", "Maybe it is 42.")
        finally:
            await ex.aclose()

    return asyncio.run(go())


def test_a_reply_with_a_thinking_block_then_text_gives_the_text(anthropic_api):
    exp = ground(anthropic_api, "claude-opus-5-5")  # thinking cannot be turned off: effort low
    assert anthropic_api.shapes == [["thinking", "text"]]
    assert exp.text == "The step is valid: 6 * 7 = 42 by the multiplication table, so the hedge is unnecessary."
    assert not exp.failed and exp.usage["completion"] > len(exp.text.split())  # the thinking tokens are paid
    body = anthropic_api.requests[-1]["json"]
    assert body["output_config"] == {"effort": "low"} and body["max_tokens"] > 512 and "thinking" not in body


@pytest.mark.parametrize("model", list(CLAUDE) + ["claude-haiku-4-5"])
@pytest.mark.parametrize("preflight", [True, False], ids=["capabilities", "table"])
def test_every_current_claude_accepts_the_grounding_request_and_answers_with_text(anthropic_api, model, preflight):
    """The measurement: the fake thinks first wherever the model would (THINKING_TOKENS at the
    effort asked), and every model gets a valid request whose text is not crowded out."""
    caps = None
    if preflight:
        from chainforge.providers.preflight import Preflight, preflight as run
        from chainforge.providers.resolve import Source, _remote, _check_url

        src = _remote("anthropic", model, _check_url(anthropic_api.url, "ANTHROPIC_BASE_URL"), "ANTHROPIC_BASE_URL",
                      anthropic_api.api_key, "ANTHROPIC_API_KEY")
        caps = run("collect", [Preflight("collect", "expander", src, "--expander-model")])[0]["capabilities"]
    exp = ground(anthropic_api, model, caps)
    assert exp.text and not exp.failed, anthropic_api.requests[-1]["json"]
    assert not {"temperature", "top_p", "top_k"} & set(anthropic_api.requests[-1]["json"])


def test_the_previous_request_is_crowded_out_by_thinking_and_counted_as_a_failure_with_its_cost(anthropic_api):
    """512 tokens and no thinking field, as before: Sonnet 5.5 thinks at its default effort first,
    stops at max_tokens with no text. That is a failed grounding, and its tokens are still counted."""
    from chainforge.providers.expander import EXPANDER_MAX_TOKENS

    exp = ground(anthropic_api, "claude-sonnet-5-5", request={})  # no thinking field, room left for it
    body = anthropic_api.requests[-1]["json"]
    assert body["max_tokens"] > EXPANDER_MAX_TOKENS and "thinking" not in body
    old = _messages(anthropic_api, {"model": "claude-sonnet-5-5", "max_tokens": 512,
                                    "messages": [{"role": "user", "content": "ground this step"}]})
    assert old["stop_reason"] == "max_tokens" and [b["type"] for b in old["content"]] == ["thinking"]
    from chainforge.providers.expander import expansion_from_message
    from anthropic.types import Message

    failed = expansion_from_message(Message.model_validate(old))
    assert failed.failed and failed.text is None and failed.usage["completion"] == 512
    assert exp.text  # what the expander sends instead (room for thinking) still gets the text


def _messages(server, body: dict, path: str = "/v1/messages") -> dict:
    import urllib.request

    req = urllib.request.Request(server.url + path, json.dumps(body).encode(),
                                 {"x-api-key": server.api_key, "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, **json.loads(exc.read())}


@pytest.mark.parametrize("model,extra,status", [
    ("claude-sonnet-5-5", {"temperature": 0.2}, 400),
    ("claude-sonnet-5-5", {"top_k": 5}, 400),
    ("claude-sonnet-5-5", {"thinking": {"type": "disabled"}}, 400),
    ("claude-opus-5-5", {"thinking": {"type": "disabled"}}, 400),
    ("claude-sonnet-5-5", {"thinking": {"type": "enabled", "budget_tokens": 1024}}, 400),
    ("claude-haiku-4-5", {"output_config": {"effort": "low"}}, 400),
    ("claude-sonnet-9", {}, 404),
    ("claude-haiku-4-5", {"temperature": 0.2}, None),
    ("claude-sonnet-5", {"thinking": {"type": "disabled"}}, None),
])
def test_the_fake_claude_refuses_what_the_provider_refuses(anthropic_api, model, extra, status):
    reply = _messages(anthropic_api, {"model": model, "max_tokens": 600, **extra,
                                      "messages": [{"role": "user", "content": "hi"}]})
    assert reply.get("status") == status, reply
    if status:
        assert reply["type"] == "error" and reply["error"]["type"] in ("invalid_request_error", "not_found_error")


def test_a_grounding_cut_at_max_tokens_with_no_text_fails_and_is_paid_for(cli, tmp_path, deepseek, anthropic_api,
                                                                         monkeypatch):
    import helpers.fake_apis as fakes

    monkeypatch.setitem(fakes.THINKING_TOKENS, "low", 5000)  # thinking outgrows any max_tokens
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 2), "--output", out, "--expander-model", "claude-opus-5-5")
    assert r.exit_code == 0, r.stderr
    rows = rows_of(out)
    assert all(row["expansions"] == [None, None, None] and row["uncertain"][1] for row in rows)
    m = manifest(out)["metrics"]
    assert m["expanded_steps"] == 0 and m["expansion_output_tokens"] > 0 and m["expansion_cost_usd"] > 0
    assert all(row["usage"]["expander"]["completion"] > 0 for row in rows)


def test_message_batches_send_what_the_live_expander_sends(cli, tmp_path, deepseek, anthropic_batches):
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 2), "--output", out, "--expander-batch",
            "--poll-interval", "0.01")
    assert r.exit_code == 0, r.stderr
    (batch,) = [q for q in anthropic_batches.requests if q["path"] == "/v1/messages/batches"]
    for item in batch["json"]["requests"]:
        p = item["params"]
        assert p["model"] == "claude-sonnet-5-5" and p["thinking"] == {"type": "between_tools"}
        assert p["max_tokens"] == 512 and not {"temperature", "top_p", "top_k"} & set(p)
    assert manifest(out)["metrics"]["expanded_steps"] == 2


# ---- the preflight -----------------------------------------------------------------------------------

def test_the_preflight_finds_a_bad_deepseek_key_before_any_chat_request(cli, tmp_path, deepseek, monkeypatch):
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-not-this-one")
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 50), "--output", out)
    assert r.exit_code == 1 and "HTTP 401" in r.stderr and "DEEPSEEK_API_KEY" in r.stderr
    assert "sk-not-this-one" not in r.stderr and "Traceback" not in r.stderr
    assert deepseek.requests == [] and len(deepseek.lookups) == 1 and not out.exists()


def test_the_preflight_finds_a_bad_anthropic_key_before_any_chat_request(cli, tmp_path, deepseek, anthropic_api,
                                                                        monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-not-this-one")
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 5), "--output", out)
    assert r.exit_code == 1 and "HTTP 401" in r.stderr and "ANTHROPIC_API_KEY" in r.stderr
    assert deepseek.requests == [] and anthropic_api.requests == [] and not out.exists()


@pytest.mark.parametrize("flag,model,listed", [
    ("--teacher-model", "deepseek-v5-flash", "deepseek-flash, deepseek-v4-pro"),
    ("--expander-model", "claude-sonnet-9", "claude-sonnet-5-5"),
], ids=["deepseek", "anthropic"])
def test_the_preflight_names_the_models_the_key_can_use(cli, tmp_path, deepseek, anthropic_api, flag, model, listed):
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 3), "--output", out, flag, model)
    assert_exit_2(r, f"{flag} {model}", "not a model this key can use", listed, output=out, alone=False)
    assert deepseek.requests == [] and anthropic_api.requests == []


def test_the_preflight_resolves_an_anthropic_alias(cli, tmp_path, deepseek, anthropic_api):
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 1), "--output", out, "--expander-model", "claude-haiku-4-5")
    assert r.exit_code == 0, r.stderr
    assert anthropic_api.requests[0]["json"]["thinking"] == {"type": "disabled"}  # from its capabilities


@pytest.mark.parametrize("status", [404, 405])
def test_a_server_without_a_models_endpoint_gets_one_note_and_the_run_goes_on(cli, tmp_path, openai_server, status):
    openai_server.models_status = status
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 3), "--output", out, "--teacher", "openai",
            "--teacher-model", "r1", "--teacher-base-url", openai_server.url, "--expander", "none")
    assert r.exit_code == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if "/models" in line]
    assert len(notes) == 1 and f"HTTP {status}" in notes[0] and "not checked" in notes[0]
    assert len(rows_of(out)) == 3 and len(openai_server.lookups) == 1


def test_no_preflight_skips_the_look_up_and_collect_works_against_a_server_without_it(cli, tmp_path, openai_server):
    openai_server.models_status = 404
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 3), "--output", out, "--teacher", "openai",
            "--teacher-model", "r1", "--teacher-base-url", openai_server.url, "--expander", "none", "--no-preflight")
    assert r.exit_code == 0, r.stderr
    assert openai_server.lookups == [] and len(rows_of(out)) == 3 and "/models" not in r.stderr


# ---- fail fast on a systematic 4xx -------------------------------------------------------------------

def test_a_run_whose_first_replies_are_all_the_same_400_stops_and_resumes(cli, tmp_path, openai_server):
    openai_server.always = "400"
    out = tmp_path / "out"
    args = ["collect", "--prompts", prompts_file(tmp_path, 60), "--output", out, "--teacher", "openai",
            "--teacher-model", "r1", "--teacher-base-url", openai_server.url, "--expander", "none",
            "--concurrency", 4]
    r = cli(*args)
    assert r.exit_code == 1, r.stderr
    assert r.stderr.count("fake 400") == 1 and "first 8 replies" in r.stderr and "Traceback" not in r.stderr
    assert len(openai_server.requests) < 8 + 4  # the first 8 and those already in flight; not 60
    assert failed_lines(out) == [] and manifest(out)["status"] == "incomplete"  # nothing is lost

    openai_server.always = None  # the fix, then the same command
    r = cli(*args)
    assert r.exit_code == 0, r.stderr
    assert len(rows_of(out)) == 60 and failed_lines(out) == []


def test_an_unknown_model_without_the_preflight_stops_after_the_first_replies(cli, tmp_path, deepseek):
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 60), "--output", out, "--teacher-model", "deepseek-v9",
            "--no-preflight", "--expander", "none", "--concurrency", 2, "--fail-fast", 5)
    assert r.exit_code == 1 and r.stderr.count("Model Not Exist") == 1 and "first 5 replies" in r.stderr
    assert len(deepseek.requests) <= 5 + 2 and failed_lines(out) == []


def test_4xx_replies_after_an_answer_fail_only_their_prompts(cli, tmp_path, deepseek):
    """The watch covers the start of a run: once one reply was an answer, the same 400 three
    times (as many as --fail-fast) fails those prompts and nothing more."""
    for i in (0, 2, 3):
        deepseek.plan(f"Q{i}: what is 6 times 7?", "400")
    deepseek.plan("Q4: what is 6 times 7?", "422")
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 6), "--output", out, "--expander", "none",
            "--concurrency", 1, "--fail-fast", 3)
    assert r.exit_code == 0, r.stderr
    assert sorted(f["status_code"] for f in failed_lines(out)) == [400, 400, 400, 422] and len(rows_of(out)) == 2


def test_fail_fast_0_fails_each_prompt_as_before(cli, tmp_path, openai_server):
    openai_server.always = "400"
    out = tmp_path / "out"
    r = cli("collect", "--prompts", prompts_file(tmp_path, 10), "--output", out, "--teacher", "openai",
            "--teacher-model", "r1", "--teacher-base-url", openai_server.url, "--expander", "none", "--fail-fast", 0)
    assert r.exit_code == 1 and "all 10 prompts failed" in r.stderr
    assert len(failed_lines(out)) == 10


def test_a_grounding_cut_at_max_tokens_keeps_its_whole_sentences_and_a_refusal_fails():
    from anthropic.types import Message

    from chainforge.providers.expander import expansion_from_message

    def reply(text: str, stop: str) -> Message:
        return Message.model_validate({
            "id": "m", "type": "message", "role": "assistant", "model": "claude-sonnet-5-5", "stop_sequence": None,
            "content": [{"type": "thinking", "thinking": "…", "signature": "s"}, {"type": "text", "text": text}],
            "stop_reason": stop, "usage": {"input_tokens": 40, "output_tokens": 512, "cache_read_input_tokens": 10}})

    cut = expansion_from_message(reply("6 * 7 = 42 by the table. So the hedge is unneces", "max_tokens"))
    assert cut.text == "6 * 7 = 42 by the table." and not cut.failed
    refused = expansion_from_message(reply("Here is why", "refusal"))
    assert refused.failed and refused.text is None and refused.usage["completion"] == 512
    # input_tokens leaves the cached part out; the prompt counts it, and cost takes it at the cache-hit rate
    assert refused.usage["prompt"] == 50 and refused.usage["cache_hit"] == 10


def test_reject_runs_the_expanders_preflight_before_it_samples(cli, tmp_path, tiny_model, anthropic_api, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-not-this-one")
    out = tmp_path / "out"
    r = cli("reject", "--model", tiny_model, "--data", prompts_file(tmp_path, 2), "--output", out,
            "--expander", "anthropic", "--num-samples", 2, "--max-new-tokens", 8)
    assert r.exit_code == 1 and "HTTP 401" in r.stderr and "ANTHROPIC_API_KEY" in r.stderr
    assert not out.exists() and anthropic_api.requests == [] and len(anthropic_api.lookups) == 1
