"""`chainforge run` with `eval_data`: the recipe's prompts are decontaminated against it before the
first stage that reads them (recipe key `decontaminate`), on the tiny model with a local teacher."""

import json

from chainforge.outputs import read_manifest
from helpers.files import write_jsonl
from helpers.rows import RECIPE_ROWS, write_recipe

EVAL_ROWS = [{"id": "e0", "prompt": "A train leaves the station at 3 pm going 60 miles per hour; when does it arrive?",
              "answer": "5"},
             {"id": "e1", "prompt": "How many positive divisors does the number 3600 have in total?", "answer": "45"}]


def contaminated_prompts(base):
    """Four clean rows, an exact copy of an eval question and a near copy (case and punctuation)."""
    rows = RECIPE_ROWS + [{"id": "copy", "prompt": EVAL_ROWS[0]["prompt"], "answer": "5"},
                   {"id": "near", "prompt": "HOW many positive divisors does the number 3600 have, in total??",
                    "answer": "45"}]
    return write_jsonl(base / "train.jsonl", rows), write_jsonl(base / "eval.jsonl", EVAL_ROWS)


def collect_only(model):
    return [{"name": "collect", "command": "collect", "teacher": "local", "teacher_model": str(model),
             "max_new_tokens": 8}]


def test_run_decontaminates_prompts_against_eval_data_before_they_are_read(tmp_path, cli, tiny_model):
    prompts, eval_data = contaminated_prompts(tmp_path)
    run_dir = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", run_dir, tiny_model, prompts, collect_only(tiny_model),
                          eval_data=str(eval_data), eval_every_stage=False)
    r = cli("run", recipe)
    assert r.exit_code == 0, r.stderr
    clean = run_dir / "decontaminate"
    assert read_manifest(clean)["metrics"]["removed"] == 2
    removed = [json.loads(line)["id"] for line in (clean / "removed.jsonl").read_text().splitlines()]
    assert removed == ["copy", "near"]
    collected = read_manifest(run_dir / "00-collect")
    assert collected["config"]["prompts"] == str(clean)
    assert collected["metrics"]["prompts"] == 4
    state = json.loads((run_dir / "run.json").read_text())
    assert state["decontaminate"] is True
    assert state["decontaminated"]["removed"] == 2 and state["decontaminated"]["kept"] == 4
    assert cli("report", run_dir).exit_code == 0
    assert "removed 2 of 6 training prompts that overlap eval_data" in (run_dir / "report.md").read_text()

    # the same recipe again: the step and the stage are current, nothing is redone
    r = cli("run", recipe)
    assert r.exit_code == 0, r.stderr
    assert r.stderr.count("complete with the same options: skipped") == 2


def test_decontaminate_false_reads_the_prompts_as_given(tmp_path, cli, tiny_model):
    prompts, eval_data = contaminated_prompts(tmp_path)
    run_dir = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", run_dir, tiny_model, prompts, collect_only(tiny_model),
                          eval_data=str(eval_data), eval_every_stage=False, decontaminate=False)
    r = cli("run", recipe)
    assert r.exit_code == 0, r.stderr
    assert not (run_dir / "decontaminate").exists()
    assert read_manifest(run_dir / "00-collect")["metrics"]["prompts"] == 6


def test_decontaminate_true_without_eval_data_is_exit_2(tmp_path, cli, tiny_model):
    prompts, _ = contaminated_prompts(tmp_path)
    run_dir = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", run_dir, tiny_model, prompts, collect_only(tiny_model),
                          decontaminate=True)
    r = cli("run", recipe)
    assert r.exit_code == 2 and "eval_data" in r.stderr and "Traceback" not in r.stderr
    assert not run_dir.exists()
