"""Eval sets that name their own prompt column, subset and split (`--against PATH:column=…:subset=…:split=…`),
for `chainforge decontaminate` and for `run`'s automatic step, on local files and a local dataset
repository laid out like GSM8K on the hub (two subsets, train and test splits)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import yaml

from chainforge.outputs import read_manifest
from chainforge.decontam import EvalSet, format_eval_set, parse_eval_set
from chainforge.errors import UsageError
from chainforge.stages.decontaminate import REMOVED, DecontaminateConfig, run
from helpers.cli import assert_exit_2
from helpers.files import write_jsonl

README = """---
configs:
- config_name: main
  data_files:
  - split: train
    path: main/train-*
  - split: test
    path: main/test-*
- config_name: socratic
  data_files:
  - split: train
    path: socratic/train-*
  - split: test
    path: socratic/test-*
---
"""
# one question per subset and split, no 8-word run shared between any two of them
QUESTIONS = {
    ("main", "test"): "Natalia sold clips to 48 of her friends in April and half as many in May.",
    ("main", "train"): "Weng earns 12 dollars an hour for babysitting and worked 50 minutes yesterday.",
    ("socratic", "test"): "Betty is saving money for a new wallet which costs one hundred dollars.",
    ("socratic", "train"): "James writes a three page letter to two different friends twice a week.",
}
MATH = "Convert the point (0, 3) in rectangular coordinates to polar coordinates and give r and theta."


def gsm8k_like(root: Path) -> Path:
    """A dataset repository folder with GSM8K's layout and its `question` column."""
    root.mkdir(parents=True)
    (root / "README.md").write_text(README, encoding="utf-8")
    for (subset, split), question in QUESTIONS.items():
        datasets.Dataset.from_list([{"question": question, "answer": "#### 1"}]).to_parquet(
            str(root / subset / f"{split}-00000-of-00001.parquet"))
    return root


@pytest.fixture
def sets(tmp_path):
    """Training prompts (column `problem`) holding a copy of every eval-like question, a MATH-like
    eval file (column `problem`) and the GSM8K-like repository (column `question`)."""
    train = write_jsonl(tmp_path / "train.jsonl", [
        {"id": "clean", "problem": "What is the sum of the interior angles of a hexagon in degrees?"},
        {"id": "math", "problem": MATH},
        *({"id": f"{subset}-{split}", "problem": f"Question: {q}"} for (subset, split), q in QUESTIONS.items()),
    ])
    math = write_jsonl(tmp_path / "math500.jsonl", [{"problem": MATH, "answer": "(3, pi/2)"}])
    return {"train": train, "math": math, "repo": gsm8k_like(tmp_path / "gsm8k")}


# ---- the syntax ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value,expected", [
    ("data/test.jsonl", EvalSet("data/test.jsonl", "data/test.jsonl")),
    ("openai/gsm8k:subset=main:split=test:column=question",
     EvalSet("openai/gsm8k:subset=main:split=test:column=question", "openai/gsm8k", "question", "main", "test")),
    ("HuggingFaceH4/MATH-500:column=problem", EvalSet("HuggingFaceH4/MATH-500:column=problem",
                                                      "HuggingFaceH4/MATH-500", column="problem")),
    ("evals/gsm8k:split=test", EvalSet("evals/gsm8k:split=test", "evals/gsm8k", split="test")),
])
def test_an_eval_set_is_a_path_with_optional_settings(value, expected):
    assert parse_eval_set(value) == expected
    assert parse_eval_set(format_eval_set(expected.path, expected.column, expected.subset,
                                          expected.split)) == EvalSet(**{**expected.__dict__, "given": format_eval_set(
                                              expected.path, expected.column, expected.subset, expected.split)})


def test_a_path_may_hold_colons_when_it_exists(tmp_path):
    odd = write_jsonl(tmp_path / "a:b.jsonl", [{"prompt": "x"}])
    assert parse_eval_set(f"{odd}:column=q") == EvalSet(f"{odd}:column=q", str(odd), column="q")


@pytest.mark.parametrize("value,why", [
    ("data/test.jsonl:colum=question", "unknown setting 'colum' (known: column, subset, split)"),
    ("data/test.jsonl:split=", "'split=' has no value"),
    ("data/test.jsonl:split=a:split=b", "'split' is given twice"),
    (":split=test", "no path or hub id before the settings"),
    ("openai/gsm8k:main:test", "'test' is not a key=value setting"),
])
def test_a_malformed_eval_set_says_the_form(value, why):
    with pytest.raises(UsageError) as err:
        parse_eval_set(value)
    assert err.value.message == (f"--against {value}: {why}; an eval set is "
                                 f"PATH[:column=NAME][:subset=NAME][:split=NAME], e.g. --against "
                                 f"openai/gsm8k:subset=main:split=test:column=question")


# ---- the stage ----------------------------------------------------------------------------------

def test_each_eval_set_is_read_with_its_own_column_subset_and_split(sets, tmp_path):
    out = tmp_path / "clean"
    math = f"{sets['math']}:column=problem"
    gsm = f"{sets['repo']}:subset=main:split=test:column=question"
    run(DecontaminateConfig(data=str(sets["train"]), prompt_column="problem", against=[math, gsm], output=str(out)))
    # the GSM8K train split and the other subset are not what is evaluated: those copies stay
    assert datasets.load_from_disk(str(out))["id"] == ["clean", "main-train", "socratic-test", "socratic-train"]
    removed = [json.loads(line) for line in (out / REMOVED).read_text().splitlines()]
    assert [(r["id"], r["eval_file"]) for r in removed] == [("math", math), ("main-test", gsm)]
    manifest = read_manifest(out)
    assert manifest["metrics"]["removed_by_eval"] == {math: 1, gsm: 1}
    assert manifest["config"]["against"] == [math, gsm]
    assert [i["path"] for i in manifest["inputs"]] == [str(sets["train"]), str(sets["math"]), str(sets["repo"])]


def test_without_a_column_setting_the_prompt_column_names_both_sides(sets, tmp_path):
    # the MATH file shares --prompt-column `problem`; the same GSM8K set, another split
    out = tmp_path / "clean"
    run(DecontaminateConfig(data=str(sets["train"]), prompt_column="problem", output=str(out),
                            against=[str(sets["math"]), f"{sets['repo']}:subset=socratic:split=train:column=question"]))
    assert datasets.load_from_disk(str(out))["id"] == ["clean", "main-test", "main-train", "socratic-test"]


def test_the_data_set_itself_is_refused_but_another_split_of_it_is_not(sets, tmp_path):
    repo = str(sets["repo"])
    with pytest.raises(UsageError, match="is the --data set itself"):
        DecontaminateConfig(data=repo, subset="main", split="train", output="o",
                            against=[f"{repo}:subset=main:split=train:column=question"])
    DecontaminateConfig(data=repo, subset="main", split="train", output="o",
                        against=[f"{repo}:subset=main:split=test:column=question"])
    with pytest.raises(UsageError, match="more than once"):
        DecontaminateConfig(data=str(sets["train"]), output="o",
                            against=[f"{repo}:split=test:subset=main", f"{repo}:subset=main:split=test"])


def bad_sets(sets) -> dict:
    repo, math = sets["repo"], sets["math"]
    return {
        "unknown setting": (f"{math}:colum=problem", "unknown setting 'colum'"),
        "column missing": (str(repo) + ":subset=main:split=test",
                           f"has no column 'problem'; columns found: question, answer (name the prompt column: "
                           f"--against {repo}:column=NAME)"),
        "split missing": (f"{repo}:subset=main:split=validation:column=question",
                          f"has no split 'validation'; its splits: train, test (pass --against {repo}:split=NAME)"),
        "subset not named": (f"{repo}:column=question",
                             f"has several subsets: main, socratic; choose one with --against {repo}:subset=NAME"),
        "split on a file": (f"{math}:split=test", ":split=test: --against"),
        "positional settings": (f"{repo}:main:test", "'test' is not a key=value setting"),
    }


@pytest.mark.parametrize("case", ["unknown setting", "column missing", "split missing", "subset not named",
                                  "split on a file", "positional settings"])
def test_a_wrong_eval_set_is_one_error_line_with_the_fix_and_exit_2(sets, tmp_path, cli, case):
    against, message = bad_sets(sets)[case]
    out = tmp_path / "out"
    r = cli("decontaminate", "--data", sets["train"], "--prompt-column", "problem", "--against", against,
            "--output", out)
    assert_exit_2(r, message, output=out, alone=False)


def test_output_inside_an_eval_set_with_settings_is_refused(sets, tmp_path):
    out = sets["repo"] / "clean"
    with pytest.raises(UsageError, match="lies inside the --against input"):
        run(DecontaminateConfig(data=str(sets["train"]), prompt_column="problem", output=str(out),
                                against=[f"{sets['repo']}:subset=main:split=test:column=question"]))
    assert not out.exists()


# ---- `chainforge run`: the automatic step reads each eval set as its evaluation does --------------

def recipe(tmp_path, sets, model, **extra) -> Path:
    spec = {
        "run_dir": str(tmp_path / "run"), "model": str(model), "prompts": str(sets["train"]),
        "eval_data": str(sets["math"]), "eval_every_stage": False,
        "eval": {"prompt_column": "problem", "num_samples": 1, "max_new_tokens": 4},
        "stages": [
            {"name": "collect", "command": "collect", "teacher": "local", "teacher_model": str(model),
             "max_new_tokens": 4, "prompt_column": "problem"},
            {"name": "gsm8k-test", "command": "eval", "data": str(sets["repo"]), "subset": "main", "split": "test",
             "prompt_column": "question", "num_samples": 1, "max_new_tokens": 4, "temperature": 0},
            {"name": "again", "command": "eval", "data": str(sets["repo"]), "subset": "main", "split": "test",
             "prompt_column": "question", "num_samples": 1, "max_new_tokens": 4},
        ],
        **extra,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_run_checks_every_eval_set_it_evaluates_on(sets, tmp_path, cli, tiny_model):
    r = cli("run", recipe(tmp_path, sets, tiny_model), "--until", "collect")
    assert r.exit_code == 0, r.stderr
    clean = tmp_path / "run" / "decontaminate"
    manifest = read_manifest(clean)
    # eval_data as the recipe's `eval` reads it, then the eval stages' own set (once)
    assert manifest["config"]["against"] == [f"{sets['math']}:column=problem",
                                             f"{sets['repo']}:column=question:subset=main:split=test"]
    assert manifest["config"]["prompt_column"] == "problem"
    removed = [json.loads(line)["id"] for line in (clean / REMOVED).read_text().splitlines()]
    assert removed == ["math", "main-test"]
    assert read_manifest(tmp_path / "run" / "00-collect")["metrics"]["prompts"] == 4


def test_run_reads_the_prompts_subset_and_split_once_then_the_kept_rows(sets, tmp_path, tiny_model):
    from chainforge.stages.run import load_recipe, plan_run

    # the prompts are a repository too: the first stage's subset and split pick the rows to clean
    path = recipe(tmp_path, sets, tiny_model)
    spec = yaml.safe_load(path.read_text())
    spec["prompts"] = str(sets["repo"])
    spec["stages"][0].update(prompt_column="question", subset="socratic", split="test")
    path.write_text(yaml.safe_dump(spec))
    plan, clean = plan_run(load_recipe(path))
    assert (clean.config.data, clean.config.subset, clean.config.split) == (str(sets["repo"]), "socratic", "test")
    collect = plan[0].config
    assert (collect.prompts, collect.subset, collect.split) == (str(clean.output), None, None)


def test_shipped_7b_recipe_checks_both_eval_sets_as_they_are_evaluated():
    from chainforge.stages.run import eval_sets, load_recipe

    spec = load_recipe(Path(__file__).resolve().parents[1] / "configs" / "qwen2.5-7b.yaml")
    [stage] = [st for st in spec["stages"] if st["command"] == "decontaminate"]
    checked = {(s.path, s.column or stage.get("prompt_column", "prompt"), s.subset, s.split)
               for s in map(parse_eval_set, stage["against"])}
    assert checked == {("HuggingFaceH4/MATH-500", "problem", None, "test"),
                       ("openai/gsm8k", "question", "main", "test")}
    # every set the recipe evaluates on is among them (MATH-500's only split is test)
    evaluated = {(s.path, s.column, s.subset, s.split or "test") for s in map(parse_eval_set, eval_sets(spec))}
    assert evaluated == checked
