import json
import math
import sys
from types import SimpleNamespace

import pytest

from chainforge.formats import write_super_cot
from chainforge.metrics import evaluate_model, majority_vote, pass_at_k
from chainforge.sampling import VLLMModel
from helpers.cli import assert_exit_2
from helpers.files import write_jsonl
from helpers.vllm_stand_ins import StandInLLM, StandInVLLM

ROWS = [{"id": "a", "prompt": "What is 2 + 3?", "answer": "5"},
        {"id": "b", "prompt": "What is 4 + 4?", "answer": "8"},
        {"prompt": "What is 1 + 0?", "answer": "1"}]


# ---- the estimators ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n,c,k,expected", [
    (5, 2, 1, 2 / 5),
    (5, 2, 2, 1 - 3 / 10),           # 1 - C(3,2)/C(5,2)
    (10, 3, 5, 1 - 21 / 252),        # 1 - C(7,5)/C(10,5)
    (4, 0, 4, 0.0),
    (4, 1, 4, 1.0),
    (4, 4, 3, 1.0),
    (200, 1, 100, 0.5),              # 1 - C(199,100)/C(200,100) = 100/200
])
def test_pass_at_k_against_hand_computed_values(n, c, k, expected):
    assert math.isclose(pass_at_k(n, c, k), expected, rel_tol=1e-12)


def test_pass_at_k_rejects_impossible_counts():
    for args in ((4, 5, 1), (4, 1, 0), (4, 1, 5), (0, 0, 1)):
        with pytest.raises(ValueError):
            pass_at_k(*args)


def test_majority_vote_and_its_tie_rule():
    # 2-2 tie: the answer seen first wins
    assert majority_vote(["3", "5", "5", "3"]) == ("3", 2)
    assert majority_vote(["5", "3", "3", "5"]) == ("5", 2)
    # equivalent answers vote together (answers_match), named by the first of them
    assert majority_vote(["7", "1/2", "0.5", None]) == ("1/2", 2)
    assert majority_vote([None, "", None]) == (None, 0)
    # a clear majority beats an earlier answer
    assert majority_vote(["9", "4", "4"]) == ("4", 2)


def cot(answer):
    return write_super_cot(["add the numbers"], None, answer)


def test_evaluate_model_metrics_by_hand(tiny_model):
    from chainforge.models import load_tokenizer, resolve_model

    tok = load_tokenizer(resolve_model(str(tiny_model)))
    script = [
        [cot("5"), cot("6"), "so \\boxed{5}", "no idea"],      # a: 2 correct, majority 5 (2 votes)
        [cot("9"), cot("7"), cot("7"), cot("8")],              # b: 1 correct, majority 7 -> wrong
        ["\\boxed{2}", "\\boxed{1}", "\\boxed{2}", "\\boxed{1}"],  # 2-2 tie: 2 came first -> wrong
    ]
    model = VLLMModel(StandInLLM(script), sampling_params=SimpleNamespace)
    metrics, results = evaluate_model(model, tok, ROWS, num_samples=4, temperature=0.6)
    assert metrics["k"] == 4
    assert math.isclose(metrics["pass@1"], (2 / 4 + 1 / 4 + 2 / 4) / 3)
    assert math.isclose(metrics["pass@k"], 1.0)
    assert math.isclose(metrics["maj@k"], 1 / 3)
    assert math.isclose(metrics["format_rate"], 6 / 12)
    assert math.isclose(metrics["mean_completion_tokens"], (1 + 2 + 3 + 4) / 4)
    a, b, c = results
    assert set(a) == {"id", "prompt", "answer", "completions", "rewards", "correct", "pass_at_1",
                      "majority_answer", "majority_correct"}
    assert a["correct"] == [True, False, True, False] and a["pass_at_1"] == 0.5
    assert a["rewards"] == [1.2, 0.2, 1.0, 0.0]  # accuracy + format
    assert (a["majority_answer"], a["majority_correct"]) == ("5", True)
    assert (b["majority_answer"], b["majority_correct"]) == ("7", False)
    assert (c["majority_answer"], c["majority_correct"]) == ("2", False)
    assert c["id"] == __import__("chainforge.sampling", fromlist=["prompt_id"]).prompt_id("What is 1 + 0?")


def test_evaluate_model_greedy_draws_one(tiny_model):
    from chainforge.models import load_tokenizer, resolve_model

    tok = load_tokenizer(resolve_model(str(tiny_model)))
    model = VLLMModel(StandInLLM([[cot("5")], [cot("1")], ["\\boxed{1}"]]), sampling_params=SimpleNamespace)
    metrics, results = evaluate_model(model, tok, ROWS, num_samples=8, temperature=0)
    assert metrics["k"] == 1 and [len(r["completions"]) for r in results] == [1, 1, 1]
    assert math.isclose(metrics["pass@1"], 2 / 3) and metrics["pass@1"] == metrics["pass@k"] == metrics["maj@k"]


# ---- the command --------------------------------------------------------------------------------------

@pytest.fixture
def toy(tmp_path):
    return write_jsonl(tmp_path / "toy.jsonl", ROWS)


def _eval(cli, tiny_model, data, out, *extra):
    return cli("eval", "--model", tiny_model, "--data", data, "--output", out, "--max-new-tokens", 8, *extra)


def test_eval_writes_results_and_metrics(cli, tiny_model, toy, tmp_path):
    out = tmp_path / "ev"
    r = _eval(cli, tiny_model, toy, out, "--num-samples", 3)
    assert r.exit_code == 0, r.stderr
    manifest = json.loads((out / "chainforge.json").read_text())
    assert manifest["status"] == "complete" and manifest["stage"] == "eval"
    assert set(manifest["metrics"]) == {"pass@1", "pass@1_ci", "pass@k", "maj@k", "format_rate", "mean_completion_tokens", "k"}
    assert manifest["metrics"]["k"] == 3
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines][:2] == ["a", "b"]
    assert all(len(line["completions"]) == len(line["rewards"]) == len(line["correct"]) == 3 for line in lines)
    assert "pass@1" in r.stderr and "maj@k" in r.stderr


def test_eval_greedy_and_compare(cli, tiny_model, toy, tmp_path):
    base = tmp_path / "base"
    assert _eval(cli, tiny_model, toy, base, "--temperature", 0, "--num-samples", 4).exit_code == 0
    assert json.loads((base / "chainforge.json").read_text())["metrics"]["k"] == 1
    lines = [json.loads(line) for line in (base / "results.jsonl").read_text().splitlines()]
    assert all(len(line["completions"]) == 1 for line in lines)
    r = _eval(cli, tiny_model, toy, tmp_path / "other", "--num-samples", 2, "--compare", base)
    assert r.exit_code == 0, r.stderr
    assert "this run vs" in r.stderr and "delta" in r.stderr
    for metric in ("pass@1", "maj@k", "format_rate", "mean_completion_tokens"):
        assert metric in r.stderr
    assert "on 3 shared questions" in r.stderr


def test_compare_rows_are_deltas():
    from chainforge.stages.evaluate import comparison_rows

    rows = {name: (a, b, d) for name, a, b, d in comparison_rows({"pass@1": 0.5, "k": 4}, {"pass@1": 0.25})}
    assert rows["pass@1"] == (0.5, 0.25, 0.25)
    assert rows["k"] == (4, None, None)


def test_bad_input_is_one_line_exit_2_and_nothing_created(cli, tiny_model, toy, tmp_path, monkeypatch):
    no_answer = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "What is 2 + 3?"}])
    not_eval = tmp_path / "not-eval"
    not_eval.mkdir()
    (not_eval / "chainforge.json").write_text(json.dumps({"stage": "reject", "status": "complete"}))
    monkeypatch.setitem(sys.modules, "vllm", None)
    bad_prompt = write_jsonl(tmp_path / "bp.jsonl", [{"prompt": ["not", "messages"], "answer": "2"}])
    cases = [
        (("--num-samples", 0), "--num-samples"),
        (("--data", bad_prompt), "--data row 0: column 'prompt' must be a non-empty string"),
        (("--rewards", "helpers.rewards:vowel_share", "--no-custom-rewards"), "custom rewards are turned off"),
        ((), "no answer column"),
        (("--compare", not_eval), "is not an eval output"),
        (("--compare", tmp_path / "missing"), "is not an eval output"),
        (("--backend", "vllm"), "pip install 'chainforge-r1[vllm]'"),
        (("--rewards", "accuracy,brevity"), "unknown reward 'brevity'"),
    ]
    for i, (extra, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        data = no_answer if message == "no answer column" else toy
        r = _eval(cli, tiny_model, data, out, *extra)
        assert_exit_2(r, message, output=out)


def test_num_samples_below_one_in_the_real_program_is_one_line(tmp_path, tiny_model, toy):
    import subprocess

    r = subprocess.run([sys.executable, "-m", "chainforge", "eval", "--model", str(tiny_model), "--data", str(toy),
                        "--output", str(tmp_path / "o"), "--num-samples", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("Error:") and r.stderr.count("\n") == 1
    assert "--num-samples" in r.stderr and not (tmp_path / "o").exists()


def test_eval_with_the_vllm_backend_through_a_stand_in(cli, tiny_model, toy, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", StandInVLLM)
    out_v, out_h = tmp_path / "v", tmp_path / "h"
    r = _eval(cli, tiny_model, toy, out_v, "--backend", "vllm", "--temperature", 0)
    assert r.exit_code == 0, r.stderr
    assert _eval(cli, tiny_model, toy, out_h, "--temperature", 0).exit_code == 0
    read = lambda p: [json.loads(line)["completions"] for line in (p / "results.jsonl").read_text().splitlines()]
    assert read(out_v) == read(out_h)  # same prompts rendered, same greedy text through either backend
