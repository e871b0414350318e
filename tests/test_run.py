"""`chainforge run`: a recipe through collect (local teacher) → sft → grpo on the tiny model,
skip-when-complete, redo-on-change, resume of an unfinished stage, and recipe validation."""

import json
import shutil

import pytest
import yaml

from chainforge.outputs import read_manifest
from helpers.files import write_jsonl
from helpers.rows import RECIPE_ROWS, write_recipe

def stages_for(model, sft_steps=1):
    return [
        {"name": "collect", "command": "collect", "teacher": "local", "teacher_model": str(model),
         "max_new_tokens": 24},
        {"name": "sft-cold", "command": "sft", "max_steps": sft_steps, "only_correct": False, "max_new_tokens": 8,
         "batch_size": 2},
        {"name": "rl", "command": "grpo", "max_steps": 1, "num_generations": 2, "max_new_tokens": 8,
         "limit": 2, "prompts_per_step": 2},
    ]


@pytest.fixture(scope="module")
def _pristine_run(tmp_path_factory, tiny_model):
    """One real run of collect → sft → grpo, made once; `finished_run` hands each test its own copy."""
    from helpers.cli import CLI

    base = tmp_path_factory.mktemp("run")
    prompts = write_jsonl(base / "train.jsonl", RECIPE_ROWS)
    recipe = write_recipe(base / "recipe.yaml", base / "run", tiny_model, prompts, stages_for(tiny_model))
    result = CLI()("run", recipe)
    snapshot = tmp_path_factory.mktemp("run-snapshot") / "base"
    shutil.copytree(base, snapshot, symlinks=True)
    return base, snapshot, recipe, result


@pytest.fixture
def finished_run(_pristine_run):
    """The finished run as it was made, whatever earlier tests did to it: restored in place from
    the snapshot (the manifests record absolute paths, so the run cannot move)."""
    base, snapshot, recipe, result = _pristine_run
    shutil.rmtree(base)
    shutil.copytree(snapshot, base, symlinks=True)
    return base, recipe, result


def test_recipe_runs_every_stage_with_defaults_from_earlier_stages(finished_run, tiny_model):
    base, recipe, result = finished_run
    assert result.exit_code == 0, result.output
    run_dir = base / "run"
    names = sorted(p.name for p in run_dir.iterdir() if p.is_dir())
    assert names[:3] == ["00-collect", "01-sft-cold", "02-rl"]
    for name in names[:3]:
        assert read_manifest(run_dir / name)["status"] == "complete"
    sft = read_manifest(run_dir / "01-sft-cold")
    assert sft["config"]["data"] == str(run_dir / "00-collect")  # latest earlier dataset
    assert sft["config"]["model"] == str(tiny_model)  # the recipe's base model
    rl = read_manifest(run_dir / "02-rl")
    assert rl["config"]["model"] == str(run_dir / "01-sft-cold")  # latest earlier checkpoint
    assert rl["config"]["data"] == str(base / "train.jsonl")  # grpo reads the recipe's prompts
    state = json.loads((run_dir / "run.json").read_text())
    assert all(state["stages"][n]["status"] == "complete" for n in ("collect", "sft-cold", "rl"))
    assert all(state["stages"][n]["wall_s"] > 0 for n in ("collect", "sft-cold", "rl"))


def test_rerun_skips_complete_stages_and_a_change_redoes_it_and_what_follows(finished_run, cli, tiny_model):
    base, recipe, _ = finished_run
    run_dir = base / "run"
    before = {n: read_manifest(run_dir / n)["fingerprint"] for n in ("00-collect", "01-sft-cold", "02-rl")}
    r = cli("run", recipe)
    assert r.exit_code == 0, r.output
    assert r.stderr.count("skipped") == 3
    assert {n: read_manifest(run_dir / n)["fingerprint"] for n in before} == before

    # change sft's steps: collect stays, sft and everything after it are redone
    write_recipe(recipe, run_dir, tiny_model, base / "train.jsonl", stages_for(tiny_model, sft_steps=2))
    r = cli("run", recipe)
    assert r.exit_code == 0, r.output
    after = {n: read_manifest(run_dir / n)["fingerprint"] for n in before}
    assert after["00-collect"] == before["00-collect"]
    assert after["01-sft-cold"] != before["01-sft-cold"]
    assert after["02-rl"] != before["02-rl"]
    assert read_manifest(run_dir / "01-sft-cold")["config"]["max_steps"] == 2


def test_an_unfinished_stage_is_resumed_not_redone(finished_run, cli):
    base, recipe, _ = finished_run
    run_dir = base / "run"
    # what a crash or Ctrl-C in the grpo stage leaves: its manifest says running
    m = read_manifest(run_dir / "02-rl")
    m["status"] = "running"
    (run_dir / "02-rl" / "chainforge.json").write_text(json.dumps(m))
    r = cli("run", recipe, "--from", "rl")
    assert r.exit_code == 0, r.output
    assert "[02-rl] unfinished: resuming" in r.stderr and "--overwrite" not in r.stderr
    assert read_manifest(run_dir / "02-rl")["status"] == "complete"


def test_from_and_until(finished_run, cli):
    base, recipe, _ = finished_run
    r = cli("run", recipe, "--from", "sft-cold", "--until", "sft-cold")
    assert r.exit_code == 0, r.output
    assert "[01-sft-cold]" in r.stderr and "[00-collect]" not in r.stderr and "[02-rl]" not in r.stderr
    r = cli("run", recipe, "--from", "nope")
    assert r.exit_code == 2 and "no such stage; stages: collect, sft-cold, rl" in r.stderr


def test_from_a_stage_whose_inputs_were_never_made(tmp_path, cli, tiny_model):
    prompts = write_jsonl(tmp_path / "p.jsonl", RECIPE_ROWS)
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "run", tiny_model, prompts, stages_for(tiny_model))
    r = cli("run", recipe, "--from", "rl")
    assert r.exit_code == 2 and "earlier stage 'collect' has no complete output" in r.stderr


@pytest.mark.parametrize("mutate,needle", [
    (lambda r: r.update(colour="red"), "unknown key(s) colour"),
    (lambda r: r.pop("run_dir"), "`run_dir` is required"),
    (lambda r: r.update(stages=[]), "`stages` must be a non-empty list"),
    (lambda r: r["stages"].append(dict(r["stages"][0])), "stage name 'collect' is used twice"),
    (lambda r: r["stages"].append({"name": "x", "command": "train"}), "unknown command 'train'"),
    (lambda r: r["stages"][1].update(learning_rat=1e-5), "has unknown option 'learning_rat'"),
    (lambda r: r["stages"][1].update(max_steps="many"), "key 'max_steps' expects int"),
    (lambda r: r["stages"][1].update(output="elsewhere"), "has unknown option 'output'"),
    (lambda r: r["stages"].append({"command": "sft"}), "needs `name` and `command`"),
    (lambda r: r["stages"][0].update(name="x/../../victim"), "stage name 'x/../../victim' must match"),
    (lambda r: r["stages"][0].update(name=".."), "stage name '..' must match"),
    (lambda r: r["stages"][1].update(config="missing.yaml"), "config file not found"),
    (lambda r: r.update(eval={"bogus": 1}), "recipe"),
    (lambda r: r.update(eval_every_stage="yes"), "`eval_every_stage` must be true or false"),
])
def test_bad_recipes_are_refused_before_anything_runs(tmp_path, cli, tiny_model, mutate, needle):
    prompts = write_jsonl(tmp_path / "p.jsonl", RECIPE_ROWS)
    recipe = {"run_dir": str(tmp_path / "run"), "model": str(tiny_model), "prompts": str(prompts),
              "stages": stages_for(tiny_model)}
    mutate(recipe)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    r = cli("run", tmp_path / "r.yaml")
    assert r.exit_code == 2, r.output
    assert needle in r.stderr and r.stderr.startswith("Error: ")
    assert not (tmp_path / "run").exists()


def test_missing_recipe(cli, tmp_path):
    r = cli("run", tmp_path / "nope.yaml")
    assert r.exit_code == 2 and "recipe not found" in r.stderr


def test_report_on_the_finished_run(finished_run, cli):
    base, _, _ = finished_run
    r = cli("report", base / "run")
    assert r.exit_code == 0, r.output
    report = (base / "run" / "report.md").read_text()
    for folder in ("00-collect", "01-sft-cold", "02-rl"):
        assert f"| {folder} |" in report
    assert (base / "run" / "plots" / "01-sft-cold-loss.png").is_file()
    assert (base / "run" / "plots" / "02-rl-reward-per-function.png").is_file()


def test_an_unfinished_stage_whose_input_was_redone_is_redone_not_resumed(finished_run, cli, tiny_model):
    base, recipe, _ = finished_run
    run_dir = base / "run"
    m = read_manifest(run_dir / "02-rl")
    m["status"] = "running"
    (run_dir / "02-rl" / "chainforge.json").write_text(json.dumps(m))
    write_recipe(recipe, run_dir, tiny_model, base / "train.jsonl", stages_for(tiny_model, sft_steps=3))
    r = cli("run", recipe)
    assert r.exit_code == 0, r.output
    assert "[02-rl] options or inputs changed: redoing it" in r.stderr
    assert "unfinished: resuming" not in r.stderr
    assert read_manifest(run_dir / "02-rl")["status"] == "complete"


def test_resumable_option_changes_skip_and_a_removed_option_redoes(finished_run, cli, tiny_model):
    base, recipe, _ = finished_run
    run_dir = base / "run"
    stages = stages_for(tiny_model)  # the recipe the run was made with
    stages[0]["max_cost"] = 5.0  # collect lets its budget change on resume: never a reason to pay again
    write_recipe(recipe, run_dir, tiny_model, base / "train.jsonl", stages)
    r = cli("run", recipe)
    assert r.exit_code == 0, r.output
    assert r.stderr.count("skipped") == 3, r.stderr
    del stages[1]["max_new_tokens"]  # removing an option is a change too
    write_recipe(recipe, run_dir, tiny_model, base / "train.jsonl", stages)
    r = cli("run", recipe)
    assert r.exit_code == 0, r.output
    assert "[00-collect] complete with the same options: skipped" in r.stderr
    assert "[01-sft-cold] options or inputs changed: redoing it" in r.stderr


def test_recipe_values_are_typed_as_the_stage_records_them(tmp_path, tiny_model):
    from chainforge.stages.run import load_recipe

    prompts = write_jsonl(tmp_path / "p.jsonl", RECIPE_ROWS)
    stages = stages_for(tiny_model)
    stages[1]["learning_rate"] = "1e-5"  # what YAML makes of `learning_rate: 1e-5`
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", tmp_path / "run", tiny_model, prompts, stages))
    assert recipe["stages"][1]["learning_rate"] == 1e-5


def test_from_after_until_is_refused(finished_run, cli):
    _, recipe, _ = finished_run
    r = cli("run", recipe, "--from", "rl", "--until", "collect")
    assert r.exit_code == 2 and "--from rl comes after --until collect" in r.stderr
