import math

import pytest

from chainforge.formats import write_super_cot
from chainforge.rewards import (
    REWARDS, get_reward, make_length, make_overlong, make_repetition, parse_reward_spec, score, weighted_total,
)

GOOD = write_super_cot(["7 + 5 = 12"], None, "12")
GROUNDED = write_super_cot(["7 + 5 = 12", "maybe carry"], [None, "Seven plus five is twelve, carry one ten."], "12")
WRONG_GROUNDED = write_super_cot(["7 + 5 = 13"], ["Seven plus five is thirteen, I am very sure."], "13")


def test_contract_values():
    acc, fmt, exp = get_reward("accuracy"), get_reward("format"), get_reward("expansion")
    completions = [GOOD, GROUNDED, WRONG_GROUNDED, "so \\boxed{12}", "twelve?"]
    answers = ["12"] * 5
    assert acc(completions, answer=answers) == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert fmt(completions) == [0.2, 0.2, 0.2, 0.0, 0.0]
    assert exp(completions, answer=answers) == [0.0, 0.1, 0.0, 0.0, 0.0]


def test_trl_signature_and_chat_messages():
    fn = REWARDS["accuracy"]
    out = fn(prompts=["p"], completions=[[{"role": "assistant", "content": GOOD}]], answer=["12"],
             completion_ids=[[1, 2]], trainer_state=None, log_metric=print, extra_column=["x"])
    assert out == [1.0]


def test_unparsable_reference_gives_none_not_zero():
    assert get_reward("accuracy")([GOOD, GOOD], answer=[None, ""]) == [None, None]


@pytest.mark.parametrize("completion,expected", [
    # tags only, no content
    ("<reasoning_process></reasoning_process><summary></summary>", 0.0),
    # many candidate answers listed in <summary>
    (write_super_cot(["guess"], None, "11, 12, 13, 14"), 0.0),
    (write_super_cot(["guess"], None, "11 or 12"), 0.0),
    # the right answer outside <summary>, a wrong one inside
    (write_super_cot(["the answer is \\boxed{12}"], None, "13"), 0.0),
    # \boxed{} nesting on a malformed completion: the last boxed counts, braces matched
    ("\\boxed{\\frac{12}{1}}", 0.0),  # a division written out is not the value, even when it equals it
    ("\\boxed{\\frac{24}{2}}", 0.0),
    ("\\boxed{\\text{12}}", 1.0),
    ("\\boxed{11} no wait \\boxed{12}", 1.0),
    ("\\boxed{12} no wait \\boxed{11}", 0.0),
])
def test_adversarial_accuracy(completion, expected):
    assert get_reward("accuracy")([completion], answer=["12"]) == [expected]


def test_empty_or_short_explanation_earns_no_bonus():
    short = write_super_cot(["7 + 5 = 12"], ["yes it is"], "12")
    empty = "<reasoning_process>\n<think>7 + 5 = 12\n<explanation></explanation>\n</think>\n</reasoning_process>\n<summary>\n12\n</summary>"
    assert get_reward("expansion")([short, empty], answer=["12", "12"]) == [0.0, 0.0]
    assert get_reward("format")([empty]) == [0.2]


def test_names_are_what_trl_logs():
    for name in ("accuracy", "format", "expansion", "length", "repetition", "overlong"):
        assert get_reward(name).__name__ == name
    assert get_reward("overlong", max_len=10, cache=5).__name__ == "overlong"


def test_unknown_reward_lists_known_ones():
    with pytest.raises(KeyError) as err:
        get_reward("brevity")
    assert "accuracy" in str(err.value) and "format" in str(err.value)


def test_dotted_path_loads_a_users_function():
    fn = get_reward("chainforge.rewards:format")
    assert fn([GOOD]) == [0.2]


def test_length_reward_prefers_short_correct_answers():
    fn = make_length(max_len=100)
    short, long_ = GOOD, write_super_cot(["word " * 90], None, "12")
    r_short, r_long = fn([short, long_], answer=["12", "12"])
    assert 0.5 <= r_long < r_short <= 1.0
    w_short, w_long = fn(["\\boxed{1}", "word " * 99 + "\\boxed{1}"], answer=["12", "12"])
    assert -0.5 <= w_short < w_long <= 0.0
    assert fn([GOOD], answer=[None]) == [None]


def test_repetition_and_overlong():
    rep = make_repetition(ngram_size=2)
    assert rep(["a b c d"]) == [0.0]
    assert rep(["a b a b a b a b"])[0] < -0.5
    over = make_overlong(max_len=10, cache=4)
    assert over([""], completion_ids=[[0] * 6]) == [0.0]
    assert over([""], completion_ids=[[0] * 8]) == [-0.5]
    assert over([""], completion_ids=[[0] * 12]) == [-1.0]
    with pytest.raises(ValueError):
        make_overlong(max_len=4, cache=10)


def test_spec_and_weighted_total():
    assert parse_reward_spec("accuracy,format=0.5") == (["accuracy", "format"], [1.0, 0.5])
    assert parse_reward_spec(None) == (["accuracy", "format", "expansion"], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError):
        parse_reward_spec("format=lots")
    with pytest.raises(ValueError):
        parse_reward_spec("format,format")
    assert weighted_total([1.0, None, 0.2], [1.0, 1.0, 0.5]) == pytest.approx(1.1)
    assert weighted_total([math.nan, 0.2], [1.0, 1.0]) == pytest.approx(0.2)
    totals, per = score([GROUNDED, "x"], {"answer": ["12", "12"]}, ["accuracy", "format", "expansion"], [1, 1, 1])
    assert totals == [pytest.approx(1.3), 0.0]
    assert per["format"] == [0.2, 0.0]


@pytest.mark.parametrize("completion", [
    "<reasoning_process></reasoning_process><summary></summary>",          # tags only
    "<reasoning_process>\n<think></think>\n</reasoning_process>\n<summary>\n12\n</summary>",  # empty step
    GOOD + "\nand one more thing",                                           # text after </summary>
    "<summary>12</summary>",                                                 # no reasoning at all
    GOOD.replace("<summary>\n12", "<summary>\n<think>12</think>"),           # tags inside <summary>
])
def test_format_is_not_earned_by_tag_soup(completion):
    assert get_reward("format")([completion]) == [0.0]
    assert get_reward("expansion")([completion], answer=["12"]) == [0.0]


def test_expansion_bonus_needs_the_right_single_answer():
    padded = write_super_cot(["guess"], ["I will list several candidates to be safe here."], "11, 12, 13")
    assert get_reward("expansion")([padded], answer=["12"]) == [0.0]
    assert get_reward("expansion")([GROUNDED], answer=[None]) == [0.0]


@pytest.mark.parametrize("summary", ["6 - 5", "6-5", "12 - 11", "\\frac{6}{6}", "3/3", "1 = 6 - 5", "0 + 1",
                                     "6 - 5 \\text{ apples}", "\\boxed{6 - 5}"])
def test_restating_the_question_earns_nothing(summary):
    # A policy that copies "6 - 5" from "What is 6 - 5?" into its summary states no answer: it must
    # not be paid as if it had computed 1 (GRPO learned exactly that when it was).
    completion = write_super_cot(["restate the question"], None, summary)
    assert get_reward("accuracy")([completion], answer=["1"]) == [0.0]
    assert get_reward("expansion")([write_super_cot(["x"], ["a grounding of five words here"], summary)],
                                   answer=["1"]) == [0.0]


def test_a_stated_value_still_earns_the_reward():
    completions = [write_super_cot(["6 - 5 = 1"], None, s) for s in ("1", "6 - 5 = 1", "x = 1", "1.0", "$1$")]
    assert get_reward("accuracy")(completions, answer=["1"] * 5) == [1.0] * 5
