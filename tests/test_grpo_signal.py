"""grpo: the prompts it trains on (--filter-samples), the health it reports per step and warns about,
and the learning-rate schedule it actually applies. Real TRL runs on tiny models: the random one,
and scripted ones (tests/helpers/tiny.py) that always, never or sometimes solve a prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.cli import assert_exit_2
from helpers.files import manifest, write_jsonl
from helpers.tiny import build_scripted_model

# 2 prompts × 4 completions a step, short completions
SMALL = ("--num-generations", "4", "--prompts-per-step", "2", "--lr", "1e-3", "--logging-steps", "1")


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def sums(answers: list[str]) -> list[dict]:
    return [{"id": f"q{i}", "prompt": f"What is {i} + {i}?", "answer": a} for i, a in enumerate(answers)]


@pytest.fixture(scope="module")
def coin_model(tmp_path_factory) -> Path:
    """Writes \\boxed{7} or \\boxed{8}, each half of the time."""
    return build_scripted_model(tmp_path_factory.mktemp("scripted") / "coin", ["\\boxed{", {"7": 0.5, "8": 0.5}, "}"])


@pytest.fixture(scope="module")
def sevens_model(tmp_path_factory) -> Path:
    """Always writes \\boxed{7}."""
    return build_scripted_model(tmp_path_factory.mktemp("scripted") / "sevens", ["\\boxed{", "7", "}"])


def test_filter_keeps_the_prompts_the_model_sometimes_solves(cli, coin_model, tmp_path):
    # answers 7 and 8: right half of the time (kept); 9: never right (dropped)
    data = write_jsonl(tmp_path / "p.jsonl", sums(["7", "9", "8", "9", "7", "8"]))
    out = tmp_path / "rl"
    r = cli("grpo", "--model", coin_model, "--data", data, "--output", out, "--rewards", "accuracy",
            "--filter-samples", "8", "--max-steps", "2", "--max-new-tokens", "12", *SMALL)
    assert r.exit_code == 0, r.stderr
    rates = {row["id"]: row for row in lines(out / "prompt_pass_rates.jsonl")}
    assert set(rates) == {f"q{i}" for i in range(6)}
    for qid in ("q1", "q3"):
        assert rates[qid]["pass_rate"] == 0.0 and rates[qid]["kept"] is False
    for qid in ("q0", "q2", "q4", "q5"):
        assert 0.0 < rates[qid]["pass_rate"] < 1.0 and rates[qid]["kept"] is True
    metrics = manifest(out)["metrics"]
    assert (metrics["prompts_scored"], metrics["prompts_kept"], metrics["prompts_always_wrong"],
            metrics["prompts_always_right"]) == (6, 4, 2, 0)
    assert "4 of 6 prompts kept (always right 0, always wrong 2)" in r.stderr
    # GRPO drew its groups from the kept prompts only
    trained = {row["answer"] for row in lines(out / "rollouts.jsonl")}
    assert trained and trained <= {"7", "8"}


def test_filter_drops_always_right_prompts_and_stops_when_too_few_are_left(cli, sevens_model, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", sums(["7", "9", "7", "9"]))
    out = tmp_path / "rl"
    args = ["grpo", "--model", sevens_model, "--data", data, "--output", out, "--rewards", "accuracy",
            "--filter-samples", "4", "--max-steps", "1", "--max-new-tokens", "12", *SMALL]
    r = cli(*args)
    assert r.exit_code == 1, r.stderr
    assert "only 0 prompt(s) are sometimes solved (0 of 4 prompts kept (always right 2, always wrong 2))" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("Error: ")
    rates = {row["id"]: row["pass_rate"] for row in lines(out / "prompt_pass_rates.jsonl")}
    assert rates == {"q0": 1.0, "q1": 0.0, "q2": 1.0, "q3": 0.0}
    assert manifest(out)["status"] != "complete"
    # the samples are journaled: the same command scores nothing again
    journal = (out / "prompt-filter.jsonl").read_text()
    again = cli(*args)
    assert again.exit_code == 1 and (out / "prompt-filter.jsonl").read_text() == journal


def test_filter_needs_reference_answers(cli, tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "What is 1 + 1?"}, {"prompt": "What is 2 + 2?"}])
    r = cli("grpo", "--model", tiny_model, "--data", data, "--output", tmp_path / "rl", "--rewards",
            "helpers.rewards:close_to_19", "--filter-samples", "4", *SMALL)
    assert_exit_2(r, "--filter-samples compare against it", output=tmp_path / "rl")


def test_health_per_step_and_the_two_warnings(cli, tiny_model, tmp_path):
    # a random model: every completion is wrong (each group has zero spread) and, at 4 tokens, cut off
    data = write_jsonl(tmp_path / "p.jsonl", sums([str(2 * i) for i in range(6)]))
    out = tmp_path / "01-rl"  # a run folder's stage name, for the report at the end
    r = cli("grpo", "--model", tiny_model, "--data", data, "--output", out, "--rewards", "accuracy",
            "--max-steps", "3", "--max-new-tokens", "4", *SMALL)
    assert r.exit_code == 0, r.stderr
    assert r.stderr.count("of the groups scored the same reward on every completion") == 1  # warned once
    assert "(--filter-samples 8)" in r.stderr
    assert r.stderr.count("of the completions were cut off at --max-new-tokens 4") == 1
    metrics = manifest(out)["metrics"]
    health = metrics["health"]
    assert [h["step"] for h in health] == [1, 2, 3]
    rollouts = lines(out / "rollouts.jsonl")
    assert len(rollouts) == 3 * 8
    assert all(row["zero_spread"] is True for row in rollouts)
    # the random model may end a completion within 4 tokens now and then: the share reported for update N
    # is the share cut off among the rollouts it trained on (drawn at step N - 1), and most are
    for h in health:
        cut = [row["truncated"] for row in rollouts if row["step"] == h["step"] - 1]
        assert h["zero_spread_groups"] == 1.0 and h["truncated"] == sum(cut) / len(cut) >= 0.75
        assert h["reward/accuracy"] == 0.0 and h["learning_rate"] is not None
    assert metrics["zero_spread_groups"] == 1.0
    assert metrics["truncated"] == sum(row["truncated"] for row in rollouts) / len(rollouts)
    # the report card shows the same figures: a table per step and a plot
    r = cli("report", tmp_path)
    assert r.exit_code == 0, r.stderr
    report = (tmp_path / "report.md").read_text()
    assert "## GRPO health: 01-rl" in report
    table = report.split("## GRPO health: 01-rl")[1].split("\n\n")[2].splitlines()
    assert table[0].startswith("| step | dead groups | cut off |") and len(table) == 2 + 3
    assert table[2].startswith("| 1 | 1.000 |") or table[2].startswith("| 1 | 1 |"), table[2]
    assert (tmp_path / "plots" / "01-rl-health-shares-of-dead-groups-and-cut-completions.png").stat().st_size > 0


def test_a_healthy_run_does_not_warn(cli, coin_model, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", sums(["7", "8", "7", "8"]))
    out = tmp_path / "rl"
    r = cli("grpo", "--model", coin_model, "--data", data, "--output", out, "--rewards", "accuracy",
            "--max-steps", "2", "--max-new-tokens", "12", *SMALL)
    assert r.exit_code == 0, r.stderr
    assert "carry no gradient" not in r.stderr and "cut off" not in r.stderr
    health = manifest(out)["metrics"]["health"]
    assert all(h["truncated"] == 0.0 for h in health)
    assert all(h["zero_spread_groups"] < 0.5 for h in health)
    assert all(row["truncated"] is False for row in lines(out / "rollouts.jsonl"))


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_the_learning_rate_schedule_actually_applied(cli, coin_model, tmp_path, schedule):
    data = write_jsonl(tmp_path / "p.jsonl", sums(["7", "8", "7", "8"]))
    out = tmp_path / "rl"
    r = cli("grpo", "--model", coin_model, "--data", data, "--output", out, "--rewards", "accuracy",
            "--max-steps", "5", "--max-new-tokens", "12", "--warmup-ratio", "0.2", "--lr-scheduler", schedule,
            *SMALL)
    assert r.exit_code == 0, r.stderr
    applied = [h["learning_rate"] for h in manifest(out)["metrics"]["health"]]
    assert applied[0] == 0.0  # the one warmup step
    if schedule == "constant":  # grpo's default: the full rate from the end of warmup to the last step
        assert applied[1:] == pytest.approx([1e-3] * 4)
    else:  # decays to 0 after the step at the full rate: a 5-step run averages 0.5 of it
        assert applied[1] == pytest.approx(1e-3) and applied[1:] == sorted(applied[1:], reverse=True)
        assert applied[-1] == pytest.approx(0.25e-3)


def test_groups_of_equal_non_integer_rewards_count_as_dead(cli, sevens_model, tmp_path):
    # every completion is right and scores 1.2: float32 gives such a group a standard deviation of
    # ~1e-7, which TRL's frac_reward_zero_std (isclose to 0, atol 1e-8) does not count
    data = write_jsonl(tmp_path / "p.jsonl", sums(["7", "7", "7", "7"]))
    out = tmp_path / "rl"
    r = cli("grpo", "--model", sevens_model, "--data", data, "--output", out, "--rewards", "accuracy=1.2",
            "--max-steps", "2", "--max-new-tokens", "12", *SMALL)
    assert r.exit_code == 0, r.stderr
    health = manifest(out)["metrics"]["health"]
    assert [h["zero_spread_groups"] for h in health] == [1.0, 1.0]
    assert all(h["reward/accuracy"] == 1.0 for h in health)
    assert "of the groups scored the same reward on every completion" in r.stderr
    from chainforge.stages.report import scalars

    assert [v for _, v in scalars(out)["zero_spread_groups"]] == [1.0, 1.0]  # TensorBoard has it too
