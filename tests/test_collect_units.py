"""The small pure parts of collect: step splitting, uncertainty, <think> parsing, prices, backoff."""

import pytest

from chainforge.providers.pricing import Price, parse_price, price_for, price_table
from chainforge.providers.retry import backoff_seconds, classify, retry_after_seconds
from chainforge.steps import UncertaintyRule, choose_expansions, split_steps
from chainforge.providers.teachers import reply_parts, split_think
from chainforge.providers.chat import PromptFailed
from chainforge.errors import UsageError


def test_split_steps_paragraphs_then_lines_then_sentences():
    assert split_steps("A.\n\n  B.\n\n\nC.") == ["A.", "B.", "C."]
    assert split_steps("one\ntwo\n") == ["one", "two"]
    assert split_steps("First this. Then that! Done?") == ["First this.", "Then that!", "Done?"]
    assert split_steps("   ") == [] and split_steps("x") == ["x"]


def test_uncertainty_markers_are_whole_words_and_long_steps_count():
    rule = UncertaintyRule.build(extra=["sanity check"], domains=["math"], long_step_words=5)
    assert rule.is_uncertain("Maybe it is 4") and rule.is_uncertain("I am NOT  SURE")
    assert not rule.is_uncertain("The maybelline box")  # not a whole word
    assert rule.is_uncertain("do a sanity check") and rule.is_uncertain("roughly 3")
    assert rule.is_uncertain("one two three four five six") and not rule.is_uncertain("one two three")


def test_choose_expansions_takes_the_most_hedged_up_to_the_cap():
    rule = UncertaintyRule.build()
    steps = ["maybe a", "sure b", "maybe perhaps c", "I guess d"]
    flags, chosen = choose_expansions(steps, rule, 2)
    assert flags == [True, False, True, True] and chosen == [0, 2]
    assert choose_expansions(steps, rule, 0)[1] == []


@pytest.mark.parametrize("text,reasoning,answer", [
    ("<think>a\n\nb</think>\n42", "a\n\nb", "42"),
    ("<think>cut off mid thought", "cut off mid thought", "cut off mid thought"),
    ("no think block\nso \\boxed{7} it is", "no think block\nso \\boxed{7} it is", "7"),
    ("babble babble\nlast line", "babble babble\nlast line", "last line"),
    ("<think>x = 3</think>", "x = 3", "x = 3"),
    ("", "", ""),
])
def test_split_think_and_its_fallback(text, reasoning, answer):
    assert split_think(text) == (reasoning, answer)


def test_reply_without_an_answer_fails_the_prompt():
    with pytest.raises(PromptFailed, match="max-new-tokens"):
        reply_parts("", "long thoughts", "length")
    with pytest.raises(PromptFailed, match="empty completion"):
        reply_parts("  ", None)
    assert reply_parts("42", "r") == ("r", "42")


def test_prices():
    assert parse_price("m=1,0.1,2") == ("m", Price(1.0, 0.1, 2.0))
    for bad in ("m=1,x,2", "m=1,2", "=1,2,3", "m=-1,0,0", "m=nan,0,0"):
        with pytest.raises(UsageError):
            parse_price(bad)
    table = price_table(["deepseek-flash=1,0.5,2"])
    assert table["deepseek-flash"].cost({"prompt": 1_000_000, "cache_hit": 400_000, "completion": 1_000_000}) \
        == pytest.approx(0.6 + 0.2 + 2)
    assert price_for(table, "claude-haiku-4-5-20251001") == table["claude-haiku-4-5"]
    assert price_for(table, "claude-sonnet-5-6") is None  # another model, not a dated snapshot of Sonnet 5
    assert price_for(table, "unknown") is None


def test_retry_rules_and_backoff_caps():
    assert [classify(s) for s in (200, 408, 409, 429, 500, 529, 400, 403, 404, 422, 401, 402)] == \
        ["ok", "retry", "retry", "retry", "retry", "retry", "fail", "fail", "fail", "fail", "stop", "stop"]
    assert retry_after_seconds("5") == 5 and retry_after_seconds("3600") == 60 and retry_after_seconds("x") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0
    assert all(backoff_seconds(20) <= 30 for _ in range(50))
    assert backoff_seconds(0, "2") == 2


def test_journal_cuts_a_torn_line(tmp_path):
    from chainforge.collect.journal import AppendLog

    log = AppendLog(tmp_path / "j.jsonl")
    log.append({"id": "a"})
    log.append({"id": "b"})
    log.close()
    with open(tmp_path / "j.jsonl", "a") as f:
        f.write('{"id": "c", "trunc')
    assert [r["id"] for _, r in AppendLog(tmp_path / "j.jsonl").recover()] == ["a", "b"]
    assert (tmp_path / "j.jsonl").read_text().count("\n") == 2 and (tmp_path / "j.jsonl").read_text().endswith("\n")


def test_local_expander_batches_the_steps_of_rows_that_ask_together(tiny_model):
    import asyncio

    from chainforge.providers.expander import LocalExpander
    from chainforge.providers.teachers import LocalModel
    from chainforge.models import resolve_model

    expander = LocalExpander(LocalModel(resolve_model(str(tiny_model))), "tiny", 0, max_new_tokens=4)

    async def rows_at_once():
        try:
            return await asyncio.gather(*(expander.expand_many(f"Q{i}", [f"step {i}a", f"step {i}b"])
                                          for i in range(5)))
        finally:
            await expander.aclose()

    results = asyncio.run(rows_at_once())
    assert expander.batches == [10]  # five rows, two steps each: one generate call
    assert [len(r) for r in results] == [2] * 5
    assert all(e.usage["completion"] > 0 for r in results for e in r)


def test_local_teacher_draws_do_not_depend_on_the_batch_a_prompt_lands_in(tiny_model):
    """A resumed collect batches only the prompts left: each prompt must still draw what it would
    have drawn in the first run."""
    from chainforge.providers.teachers import LocalTeacher, PromptItem
    from chainforge.models import resolve_model

    items = [PromptItem(i, f"id{i}", f"What is {i} + {i}?", None) for i in range(4)]
    teacher = LocalTeacher(resolve_model(str(tiny_model)), max_new_tokens=12, temperature=1.0, seed=3)
    whole = teacher.generate(items)
    resumed = teacher.generate(items[2:])
    assert [r.answer for r in whole[2:]] == [r.answer for r in resumed]
    assert [r.reasoning for r in whole[2:]] == [r.reasoning for r in resumed]
