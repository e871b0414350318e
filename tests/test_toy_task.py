"""scripts/make_toy_task.py: disjoint splits, the refusal of impossible ones, correct worked solutions."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from chainforge.formats import answers_match, extract_final_answer, parse_super_cot

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("make_toy_task", ROOT / "scripts" / "make_toy_task.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("folder", ["toy", "toy-2digit"])
def test_shipped_splits_are_disjoint(folder):
    train, test = _rows(ROOT / "data" / folder / "train.jsonl"), _rows(ROOT / "data" / folder / "test.jsonl")
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert len({r["prompt"] for r in test}) == len(test)
    if folder == "toy-2digit":
        assert len(test) >= 200  # enough questions to see a gain of ~0.1 with a paired interval


def test_shipped_worked_solutions_are_train_problems_and_correct():
    train = {r["prompt"]: r["answer"] for r in _rows(ROOT / "data" / "toy-2digit" / "train.jsonl")}
    test = {r["prompt"] for r in _rows(ROOT / "data" / "toy-2digit" / "test.jsonl")}
    traces = _rows(ROOT / "data" / "toy-2digit" / "sft.jsonl")
    assert len(traces) == len(train)
    negative = 0
    for row in traces:
        user, assistant = row["messages"]
        assert user["content"] in train and user["content"] not in test
        parse_super_cot(assistant["content"])
        assert answers_match(train[user["content"]], extract_final_answer(assistant["content"])) is True
        negative += train[user["content"]].startswith("-")
    assert 0.15 * len(traces) < negative < 0.5 * len(traces)  # subtraction with negative answers is taught


def test_worked_solution_of_every_one_and_two_digit_problem():
    mod = _script()
    for a in range(0, 100, 7):
        for b in range(0, 100, 3):
            for op in "+-":
                value = a + b if op == "+" else a - b
                text = mod.worked_solution(f"{a} {op} {b}", value)
                assert parse_super_cot(text).summary == str(value)


def test_make_split_is_disjoint_and_refuses_overlap():
    mod = _script()
    train, test, validation = mod.make_split(2, 2, ["+", "-"], 500, 200, seed=3, n_validation=50)
    assert len(train) == 500 and len(test) == 200 and len(validation) == 50
    splits = [{e for e, _ in s} for s in (train, test, validation)]
    assert not splits[0] & splits[1] and not splits[0] & splits[2] and not splits[1] & splits[2]
    with pytest.raises(ValueError, match="in two splits"):
        mod.check_disjoint(train + test[:1], test)
    with pytest.raises(ValueError, match="in two splits"):
        mod.check_disjoint(train, test, validation + train[:1])
    with pytest.raises(ValueError, match="repeats"):
        mod.check_disjoint(train + train[:1], test)
    # a validation split only takes problems from train: the test split is the same without it
    assert mod.make_split(2, 2, ["+", "-"], 500, 200, seed=3)[1] == test


def test_shipped_validation_and_reworded_splits():
    folder = ROOT / "data" / "toy-2digit"
    train, test = _rows(folder / "train.jsonl"), _rows(folder / "test.jsonl")
    validation, reworded = _rows(folder / "validation.jsonl"), _rows(folder / "test-reworded.jsonl")
    sft_prompts = {row["messages"][0]["content"] for row in _rows(folder / "sft.jsonl")}
    val_prompts = {r["prompt"] for r in validation}
    assert len(validation) >= 100
    assert not val_prompts & {r["prompt"] for r in train} and not val_prompts & {r["prompt"] for r in test}
    assert not val_prompts & sft_prompts  # settings chosen on validation never saw its worked solutions
    # the reworded set asks test problems (same ids, same answers) in words no other file uses
    by_id = {r["id"]: r for r in test}
    other_text = " ".join(r["prompt"] for r in train + test + validation) + " ".join(sft_prompts)
    for marker in ("Add ", "sum of", " minus ", "Subtract ", "Give the final"):
        assert marker not in other_text
    for row in reworded:
        original = by_id[row["id"]]
        assert row["answer"] == original["answer"] and row["prompt"] != original["prompt"]
        numbers = [w for w in original["prompt"].replace("?", " ").split() if w.isdigit()]
        assert all(n in row["prompt"] for n in numbers)
    kinds = {row["prompt"].split(" ")[0] + (" minus" if " minus " in row["prompt"] else "") for row in reworded}
    assert kinds == {"Add", "What", "What minus", "Subtract"}


def test_reworded_wording_states_the_same_sum():
    mod = _script()
    for i in range(4):
        for expr, value in (("71 - 18", 53), ("23 + 45", 68)):
            a, op, b = expr.split()
            text = mod.reworded(expr, i)
            assert a in text and b in text and "What is" + " " + expr not in text
            # "Subtract b from a" puts b first: the wording, not the order, carries the operation
            if text.startswith("Subtract"):
                assert text.index(b) < text.index(a) and value == int(a) - int(b)


def test_cli_refuses_a_pool_too_small_and_writes_nothing(tmp_path):
    out = tmp_path / "t"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_toy_task.py"), "--train", "190", "--test",
                        "20", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and "only 200 distinct problems" in r.stderr
    assert not out.exists()


def test_cli_is_reproducible(tmp_path):
    args = [sys.executable, str(ROOT / "scripts" / "make_toy_task.py"), "--digits", "2", "--train", "30",
            "--test", "10", "--traces"]
    for name in ("a", "b"):
        subprocess.run(args + ["--out", str(tmp_path / name)], check=True, capture_output=True,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    for f in ("train.jsonl", "test.jsonl", "sft.jsonl"):
        assert (tmp_path / "a" / f).read_text() == (tmp_path / "b" / f).read_text()
