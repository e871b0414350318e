"""`extra_evals` in a recipe: every evaluated checkpoint also on each extra held-out set, in
run_dir/evals-NAME/, compared like the main evals; checked before anything runs; decontaminated
against like eval_data. A real run of the tiny model."""

from __future__ import annotations

import pytest

from helpers.cli import assert_exit_2
from helpers.files import manifest, write_jsonl
from helpers.rows import RECIPE_ROWS, collect_rows, write_recipe


@pytest.fixture
def recipe_files(tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", RECIPE_ROWS)
    sft_data = write_jsonl(tmp_path / "sft.jsonl", collect_rows(4))
    test = write_jsonl(tmp_path / "test.jsonl", [{"id": f"t{i}", "prompt": f"What is {i} + 2?", "answer": str(i + 2)}
                                                for i in range(3)])
    worded = write_jsonl(tmp_path / "worded.jsonl", [{"id": f"t{i}", "prompt": f"Add {i} and 2.",
                                                      "answer": str(i + 2)} for i in range(3)])
    return prompts, sft_data, test, worded


def test_extra_sets_are_evaluated_beside_every_checkpoint(cli, tiny_model, tmp_path, recipe_files):
    prompts, sft_data, test, worded = recipe_files
    run_dir = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", run_dir, tiny_model, prompts,
                          [{"name": "sft", "command": "sft", "data": str(sft_data), "max_steps": 1, "batch_size": 2,
                            "max_length": 256, "max_new_tokens": 8}],
                          eval_data=str(test), decontaminate=False,
                          eval={"num_samples": 2, "max_new_tokens": 6},
                          extra_evals={"worded": {"data": str(worded), "temperature": 0}})
    r = cli("run", recipe)
    assert r.exit_code == 0, r.stderr
    for name in ("00-base", "00-sft"):
        main, extra = manifest(run_dir / "evals" / name), manifest(run_dir / "evals-worded" / name)
        assert main["config"]["data"] == str(test) and main["config"]["num_samples"] == 2
        # the extra set keeps the recipe's eval options and overrides its own (greedy: one sample)
        assert extra["config"]["data"] == str(worded) and extra["config"]["temperature"] == 0
        assert extra["config"]["max_new_tokens"] == 6 and extra["metrics"]["k"] == 1
    sft_extra = manifest(run_dir / "evals-worded" / "00-sft")
    assert sft_extra["config"]["compare"] == str(run_dir / "evals-worded" / "00-base")
    assert "delta_pass@1_ci" in sft_extra["metrics"]
    # a rerun skips all of them
    again = cli("run", recipe)
    assert again.exit_code == 0 and again.stderr.count("complete with the same options: skipped") == 5
    report = cli("report", run_dir)
    assert report.exit_code == 0
    assert "worded: pass@1 [95 % CI]" in (run_dir / "report.md").read_text()


@pytest.mark.parametrize("extra, fragment", [
    ({"worded": {"temperature": 0}}, "`extra_evals` must map a name to eval options with `data`"),
    ({"bad name": {"data": "x.jsonl"}}, "extra_evals name 'bad name' must match"),
    ({"worded": {"data": "x.jsonl", "num_sample": 2}}, "unknown option 'num_sample'"),
])
def test_a_wrong_extra_evals_entry_is_exit_2_before_anything_runs(cli, tiny_model, tmp_path, recipe_files,
                                                                 extra, fragment):
    prompts, sft_data, test, _ = recipe_files
    run_dir = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", run_dir, tiny_model, prompts,
                          [{"name": "sft", "command": "sft", "data": str(sft_data), "max_steps": 1}],
                          eval_data=str(test), extra_evals=extra)
    assert_exit_2(cli("run", recipe), fragment, output=run_dir)


def test_extra_sets_are_decontaminated_against(tmp_path):
    from chainforge.stages.run import eval_sets

    recipe = {"eval_data": "test.jsonl", "eval": {"prompt_column": "question"},
              "extra_evals": {"worded": {"data": str(tmp_path / "worded.jsonl")}}, "stages": []}
    sets = eval_sets(recipe)
    assert len(sets) == 2 and any(str(tmp_path / "worded.jsonl") in s and "column=question" in s for s in sets)


def test_a_pruned_student_is_evaluated_before_and_after_distillation(cli, tmp_path, recipe_files):
    """run evaluates distill's student start (the pruned copy distill trained, named in its manifest)
    and the student, each beside the main and the extra sets."""
    from helpers.tiny import build_tiny_model

    teacher = build_tiny_model(tmp_path / "teacher4", layers=4, seed=3)
    _, _, test, worded = recipe_files
    # no reference answers: the random teacher's traces are kept unchecked (with answers none is right)
    prompts = write_jsonl(tmp_path / "open.jsonl", [{"prompt": f"What is {a} + {a}?"} for a in range(8)])
    run_dir = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", run_dir, teacher, prompts,
                          [{"name": "distill", "command": "distill", "student": "pruned:3", "num_samples": 1,
                            "temperature": 1.0, "max_steps": 1, "batch_size": 2, "max_new_tokens": 6,
                            "eval_fraction": 0}],
                          eval_data=str(test), decontaminate=False, eval={"num_samples": 1, "max_new_tokens": 6},
                          extra_evals={"worded": {"data": str(worded), "temperature": 0}})
    r = cli("run", recipe)
    assert r.exit_code == 0, r.stderr
    trained = manifest(run_dir / "00-distill")
    start = manifest(run_dir / "evals" / "00-distill-student-start")
    assert start["config"]["model"] == trained["metrics"]["student_start"]
    student = manifest(run_dir / "evals" / "00-distill")
    assert student["config"]["compare"] == str(run_dir / "evals" / "00-distill-student-start")
    assert manifest(run_dir / "evals-worded" / "00-distill")["metrics"]["k"] == 1
