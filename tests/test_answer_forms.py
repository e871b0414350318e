"""One answer, many spellings: which candidate forms state the reference's value, and the three
places that judge them (answers_match, the accuracy reward, eval's `correct`) agree on each."""

from types import SimpleNamespace

import pytest

from chainforge.formats import answers_match, write_super_cot
from chainforge.metrics import evaluate_model
from chainforge.rewards import get_reward
from chainforge.sampling import VLLMModel
from helpers.vllm_stand_ins import StandInLLM

# (reference, candidate, states the reference's value)
CASES = [
    # a word before display math, and \left( … \right) around one value
    ("$9$", r"Answer \[ 9 \]", True),
    ("$1/3$", r"$\left( \frac{1}{3} \right)$", True),
    # their neighbours
    ("9", r"\left[ 9 \right]", True),
    ("9", r"\(9\)", True),
    ("9", r"Final answer: \boxed{9}.", True),
    ("9", r"Answer: \[9\]", True),
    ("9", "The answer is $$9$$.", True),
    ("9", "(9)", True),
    ("1/3", r"\bigl( \tfrac{1}{3} \bigr)", True),
    ("-3", r"x = \left( -3 \right)", True),
    ("9", r"Answer \[ 8 \]", False),
    ("1/3", r"$\left( \frac{1}{4} \right)$", False),
    # the restating trick, however it is wrapped: no value is stated
    ("1", "6 - 5", False),
    ("1", "6-5", False),
    ("1", "12 - 11", False),
    ("1", r"\frac{6}{6}", False),
    ("1", "3/3", False),
    ("1", "1 = 6 - 5", False),
    ("1", "0 + 1", False),
    ("1", r"6 - 5 \text{ apples}", False),
    ("1", r"\boxed{6 - 5}", False),
    ("2", "6/3", False),
    ("2", r"\frac{4}{2}", False),
    ("1", "1, 2", False),
    ("5", "minus 5", False),
    ("1", r"Answer \[ 6 - 5 \]", False),
    ("1", r"$\left( 6 - 5 \right)$", False),
    ("1", "(6) - (5)", False),
    ("1", r"\left(6\right) - \left(5\right)", False),
    ("1", r"\left[ 1, 2 \right]", False),
    ("2", r"\left( \frac{4}{2} \right)", False),
    ("5", r"Answer \[ minus 5 \]", False),
    ("5", r"minus \(5\)", False),
    ("1", r"Final answer: \boxed{6 - 5}.", False),
]


@pytest.mark.parametrize("ref,cand,expected", CASES)
def test_answers_match_reads_one_stated_value(ref, cand, expected):
    assert answers_match(ref, cand) is expected


def test_accuracy_reward_and_eval_agree_on_every_form(tiny_model):
    from chainforge.models import load_tokenizer, resolve_model

    completions = [write_super_cot(["work it out"], None, cand) for _, cand, _ in CASES]
    refs = [ref for ref, _, _ in CASES]
    expected = [ok for _, _, ok in CASES]
    rewards = get_reward("accuracy")(completions, answer=refs)
    assert rewards == [1.0 if ok else 0.0 for ok in expected]

    tok = load_tokenizer(resolve_model(str(tiny_model)))
    rows = [{"id": str(i), "prompt": f"question {i}", "answer": ref} for i, ref in enumerate(refs)]
    model = VLLMModel(StandInLLM([[c] for c in completions]), sampling_params=SimpleNamespace)
    _, results = evaluate_model(model, tok, rows, num_samples=1, temperature=0.6, rewards="accuracy")
    assert [r["correct"] for r in results] == [[ok] for ok in expected]
    assert [r["majority_correct"] for r in results] == expected
    assert [r["rewards"] for r in results] == [[1.0 if ok else 0.0] for ok in expected]
