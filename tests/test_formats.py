import asyncio
import threading

import pytest
from fractions import Fraction
from hypothesis import given, settings
from hypothesis import strategies as st

from chainforge.formats import (
    RESERVED_TAGS, answers_match, escape, extract_final_answer, is_super_cot, last_boxed,
    numeric_value, parse_super_cot, unescape, write_super_cot,
)

EXPECTED = """<reasoning_process>
<think>a step</think>
<think>an uncertain step
<explanation>the grounding for it</explanation>
</think>
</reasoning_process>
<summary>
the final concise answer
</summary>"""


def test_writer_matches_the_contract_layout():
    assert write_super_cot(["a step", "an uncertain step"], [None, "the grounding for it"],
                           "the final concise answer") == EXPECTED


def test_parser_reads_the_contract_example():
    parsed = parse_super_cot(EXPECTED)
    assert parsed.steps == ["a step", "an uncertain step"]
    assert parsed.expansions == [None, "the grounding for it"]
    assert parsed.summary == "the final concise answer"


def test_other_text_is_written_as_is():
    text = write_super_cot(["x < 3 and a > b, <b>bold</b>"], None, "<i>42</i>")
    assert "x < 3 and a > b, <b>bold</b>" in text
    assert "<i>42</i>" in text


def test_reserved_tags_inside_text_are_escaped_and_restored():
    step = "I wrote <think> and </summary> and <\\think> in my notes"
    text = write_super_cot([step], ["<explanation> nested"], "</reasoning_process>")
    # the only raw tags are the structural ones
    assert text.count("<think>") == 1 and text.count("<explanation>") == 1
    parsed = parse_super_cot(text)
    assert parsed.steps == [step]
    assert parsed.expansions == ["<explanation> nested"]
    assert parsed.summary == "</reasoning_process>"


piece = st.one_of(st.text(min_size=0, max_size=20), st.sampled_from(RESERVED_TAGS + ("<", ">", "<\\think>", "\\", "<\\\\/summary>")))
texts = st.lists(piece, min_size=1, max_size=8).map("".join).map(str.strip).filter(bool)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(texts, min_size=1, max_size=4), summary=texts, data=st.data())
def test_round_trip_is_exact_for_stripped_nonempty_text(steps, summary, data):
    expansions = [data.draw(st.one_of(st.none(), texts)) for _ in steps]
    parsed = parse_super_cot(write_super_cot(steps, expansions, summary))
    assert parsed.steps == steps
    assert parsed.expansions == expansions
    assert parsed.summary == summary


@settings(max_examples=200, deadline=None)
@given(st.lists(piece, max_size=10).map("".join))
def test_escape_is_reversible(text):
    assert unescape(escape(text)) == text
    for tag in RESERVED_TAGS:
        assert tag not in escape(text)


@pytest.mark.parametrize("bad", [
    "",
    "just text",
    "<reasoning_process></reasoning_process><summary>x</summary>",
    "<reasoning_process><think></think></reasoning_process><summary>x</summary>",
    "<reasoning_process><think>a</think></reasoning_process><summary> </summary>",
    "<reasoning_process>junk<think>a</think></reasoning_process><summary>x</summary>",
    "<reasoning_process><think>a</think></reasoning_process><summary>x</summary> trailing",
    "<reasoning_process><think>a <think>b</think></think></reasoning_process><summary>x</summary>",
    "<reasoning_process><think>a</think></reasoning_process><summary><think>x</summary>",
    "<summary>x</summary>",
])
def test_malformed_text_raises_value_error(bad):
    with pytest.raises(ValueError):
        parse_super_cot(bad)
    assert not is_super_cot(bad)


def test_writer_rejects_empty_parts():
    with pytest.raises(ValueError):
        write_super_cot([], None, "x")
    with pytest.raises(ValueError):
        write_super_cot(["  "], None, "x")
    with pytest.raises(ValueError):
        write_super_cot(["a"], None, " ")
    with pytest.raises(ValueError):
        write_super_cot(["a"], [None, None], "x")


def test_final_answer_is_summary_else_last_boxed():
    assert extract_final_answer(EXPECTED) == "the final concise answer"
    assert extract_final_answer("first \\boxed{1} then \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_final_answer([{"role": "assistant", "content": "so \\boxed{7}"}]) == "7"
    assert extract_final_answer("no answer here") is None
    assert last_boxed("\\boxed{a{b}c}") == "a{b}c"
    assert last_boxed("\\boxed{unclosed") is None


@pytest.mark.parametrize("ref,cand,expected", [
    ("42", "42", True),
    ("42", "The answer is 42.", True),
    ("1/2", "0.5", True),
    ("\\frac{1}{2}", "1/2", True),
    ("42", "\\boxed{42}", True),
    ("#### 1,234", "1234", True),  # GSM8K answers
    ("Paris", "paris", True),
    ("42", "43", False),
    ("42", "41 or 42", False),  # listing candidates does not win
    ("42", "3, 7, 42", False),
    ("42", "", False),
    ("42", None, False),
    (None, "42", None),
    ("  ", "42", None),
    # a numeric reference needs ONE stated value, never an expression that evaluates to it
    ("1", "6 - 5", False),
    ("1", "6-5", False),
    ("1", "\\boxed{6 - 5}", False),
    ("2", "6/3", False),  # a division restated; fractions count only in lowest terms
    ("2", "\\frac{4}{2}", False),
    ("1", "1 = 6 - 5", False),
    ("1", "1, 2", False),
    ("5", "5 x 3", False),
    ("5", "-5", False),
    ("1", "6 - 5 = 1", True),  # an equation ending in the value states it
    ("0.5", "\\frac{1}{2}", True),
    ("\\frac{1}{2}", "0.5", True),
    ("-\\frac{1}{2}", "-0.5", True),
    ("1000", "$1,000", True),
    ("1000", "\\$1,000", True),
    ("1000", "1{,}000", True),
    ("12", "12 cm", True),
    ("12", "12\\text{ cm}", True),
    ("12", "12 m/s", True),
    ("7", "\\boxed{7}", True),
    ("7", "$7$", True),
    ("-3", "\u22123", True),
    ("-3", "$-3", True),
    ("5", "5.0", True),
    ("50", "50\\%", True),
    ("1", "The result is 1.", True),
    ("5", "so the total is $5", True),
    ("1", "So 6 - 5 equals 1", False),
    ("5", "minus 5", False),
    ("5", "not 5", False),
])
def test_answers_match(ref, cand, expected):
    assert answers_match(ref, cand) is expected


def test_answers_match_off_the_main_thread_and_in_asyncio():
    results = []
    t = threading.Thread(target=lambda: results.append(answers_match("1/2", "0.5")))
    t.start()
    t.join()

    async def inside_loop():
        return await asyncio.to_thread(answers_match, "x^2+1", "1+x^2"), answers_match("3", "x = 3")

    assert results == [True]
    assert asyncio.run(inside_loop()) == (True, True)


def test_numeric_value_reads_one_number_or_none():
    assert numeric_value("$1,234.50") == Fraction(2469, 2)
    assert numeric_value("\\dfrac{3}{4} cm") == Fraction(3, 4)
    assert numeric_value("x = -7") == -7
    assert numeric_value("6 - 5") is None
    assert numeric_value("seven") is None
    assert numeric_value("1/0") is None
    assert numeric_value("1 " + "ab " * 5000 + "?") is None  # no regex blow-up on long junk
