"""Intervals: the bootstrap maths against known values, and eval's pass@1_ci / paired delta."""

import json
import math
import random

import pytest

from chainforge.metrics import (bootstrap_ci, compare_metrics, format_interval, paired_bootstrap_ci, paired_by_id,
                                verdict)
from helpers.files import write_jsonl


# ---- the maths --------------------------------------------------------------------------------------

def test_constant_values_have_a_zero_width_interval():
    assert bootstrap_ci([0.25] * 40) == [0.25, 0.25]


def test_two_values_match_the_exact_bootstrap_distribution():
    # resampling [0, 1] twice: mean 0 (1/4), 0.5 (1/2), 1 (1/4) -> the central 95 % spans [0, 1]
    assert bootstrap_ci([0.0, 1.0]) == [0.0, 1.0]
    # and the central 40 % is the middle atom alone
    assert bootstrap_ci([0.0, 1.0], level=0.4) == [0.5, 0.5]


def test_binary_questions_match_the_normal_approximation():
    # 400 questions, half solved: the standard error is 0.025, so the 95 % interval is 0.5 ± 0.049
    values = [1.0] * 200 + [0.0] * 200
    lo, hi = bootstrap_ci(values, resamples=4000)
    assert math.isclose(lo, 0.451, abs_tol=0.01) and math.isclose(hi, 0.549, abs_tol=0.01)


def test_fixed_seed_makes_the_interval_reproducible():
    rng = random.Random(1)
    values = [rng.random() for _ in range(50)]
    assert bootstrap_ci(values) == bootstrap_ci(list(values))
    assert bootstrap_ci(values, seed=1) != bootstrap_ci(values, seed=2)


def test_pairing_removes_the_between_question_spread():
    # question difficulty varies wildly, but model A beats model B by exactly 0.05 on every question
    rng = random.Random(0)
    b = [rng.random() * 0.9 for _ in range(100)]
    a = [x + 0.05 for x in b]
    lo, hi = paired_bootstrap_ci(a, b)
    assert math.isclose(lo, 0.05) and math.isclose(hi, 0.05)
    unpaired_lo = bootstrap_ci(a)[0] - bootstrap_ci(b)[1]
    assert unpaired_lo < 0  # unpaired intervals would overlap and show nothing
    with pytest.raises(ValueError):
        paired_bootstrap_ci([1.0], [1.0, 0.0])


def test_paired_by_id_uses_only_shared_questions_in_any_order():
    mine = [{"id": "q1", "pass_at_1": 1.0}, {"id": "q2", "pass_at_1": 0.5}, {"id": "q3", "pass_at_1": 1.0}]
    theirs = [{"id": "q3", "pass_at_1": 0.0}, {"id": "q1", "pass_at_1": 0.5}, {"id": "q9", "pass_at_1": 0.0}]
    assert paired_by_id(mine, theirs) == ([1.0, 1.0], [0.5, 0.0])
    m = compare_metrics(mine, theirs)
    assert m["delta_pass@1"] == 0.75 and m["compared_questions"] == 2
    assert m["delta_pass@1_ci"] == [0.5, 1.0]
    with pytest.raises(ValueError, match="share no question"):
        compare_metrics(mine, [{"id": "other", "pass_at_1": 1.0}])


def test_verdict_is_whether_the_interval_excludes_zero():
    assert verdict([0.01, 0.2]) == "helped"
    assert verdict([-0.2, -0.01]) == "hurt"
    assert verdict([-0.05, 0.1]) == "no measurable change"
    assert verdict([0.0, 0.1]) == "no measurable change"
    assert verdict(None) == "–"


def test_format_interval_text():
    text = format_interval({"pass@1_ci": [0.4, 0.55], "delta_pass@1": 0.1, "delta_pass@1_ci": [0.02, 0.18],
                            "compared_questions": 200})
    assert "[95% CI 0.400–0.550]" in text and "+0.100" in text and "200 shared questions: helped" in text


# ---- eval --------------------------------------------------------------------------------------------

ROWS = [{"id": f"q{i}", "prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(6)]


def _eval(cli, model, data, out, *extra):
    return cli("eval", "--model", model, "--data", data, "--output", out, "--max-new-tokens", 6,
               "--num-samples", 2, *extra)


def test_eval_reports_the_interval_and_the_paired_delta(cli, tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "q.jsonl", ROWS)
    base = tmp_path / "base"
    r = _eval(cli, tiny_model, data, base)
    assert r.exit_code == 0, r.stderr
    metrics = json.loads((base / "chainforge.json").read_text())["metrics"]
    lo, hi = metrics["pass@1_ci"]
    assert lo <= metrics["pass@1"] <= hi
    assert "95% CI" in r.stderr
    # the other eval: its results rewritten so that every question is solved, to know the true delta
    results = [json.loads(line) for line in (base / "results.jsonl").read_text().splitlines()]
    solved = tmp_path / "solved"
    solved.mkdir()
    (solved / "results.jsonl").write_text("".join(json.dumps({**x, "pass_at_1": 1.0}) + "\n" for x in results))
    manifest = json.loads((base / "chainforge.json").read_text())
    (solved / "chainforge.json").write_text(json.dumps({**manifest, "metrics": {**metrics, "pass@1": 1.0}}))
    r = _eval(cli, tiny_model, data, tmp_path / "again", "--compare", solved)
    assert r.exit_code == 0, r.stderr
    again = json.loads((tmp_path / "again" / "chainforge.json").read_text())["metrics"]
    assert math.isclose(again["delta_pass@1"], again["pass@1"] - 1.0)
    assert again["compared_questions"] == 6
    lo, hi = again["delta_pass@1_ci"]
    assert lo <= again["delta_pass@1"] <= hi <= 0
    assert "shared questions" in r.stderr


def test_compare_with_no_shared_question_is_exit_2_and_creates_nothing(cli, tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "q.jsonl", ROWS)
    other_data = write_jsonl(tmp_path / "o.jsonl", [{**r, "id": "x" + r["id"]} for r in ROWS[:2]])
    assert _eval(cli, tiny_model, other_data, tmp_path / "other").exit_code == 0
    out = tmp_path / "out"
    r = _eval(cli, tiny_model, data, out, "--compare", tmp_path / "other")
    assert r.exit_code == 2
    assert r.stderr.strip().startswith("Error:") and "shares no question" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()


def test_majority_vote_keeps_restated_questions_apart_from_numbers():
    from chainforge.metrics import majority_vote

    # "6 - 5" evaluates to 1 but states no answer: it must not absorb (and name) the votes for 1
    assert majority_vote(["6 - 5", "1", "1.0"]) == ("1", 2)
    assert majority_vote(["1/2", "0.5", "6 - 5"]) == ("1/2", 2)
