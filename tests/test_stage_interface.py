"""The one stage interface: `chainforge.stages.<name>.run(<Name>Config(...))` from Python, what the CLI
does when a stage crashes or is interrupted, and what `chainforge run` adds around the stages
(evaluation after every training stage, option files)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from chainforge.outputs import read_manifest
from helpers.cli import sigint_default
from helpers.files import write_jsonl

ROWS = [{"id": f"q{i}", "prompt": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1)} for i in range(4)]
ROOT = Path(__file__).resolve().parents[1]


def test_python_api_runs_a_stage_from_its_config(tiny_model, tmp_path):
    from chainforge.stages.evaluate import EvalConfig, run

    data = write_jsonl(tmp_path / "t.jsonl", ROWS[:2])
    run(EvalConfig(model=str(tiny_model), data=str(data), output=str(tmp_path / "e"), num_samples=2,
                   max_new_tokens=4, temperature=0.0))
    m = read_manifest(tmp_path / "e")
    assert m["status"] == "complete" and m["metrics"]["k"] == 1
    assert m["config"]["max_new_tokens"] == 4 and m["config"]["top_p"] == 0.95  # the config's own default


def test_a_crash_inside_a_stage_prints_the_error_and_leaves_the_output_resumable(cli, tiny_model, tmp_path,
                                                                                 monkeypatch):
    import chainforge.stages.reject as reject

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug in scoring")

    monkeypatch.setattr(reject, "score_rows", broken)
    data = write_jsonl(tmp_path / "p.jsonl", ROWS[:2])
    out = tmp_path / "out"
    r = cli("reject", "--model", tiny_model, "--data", data, "--output", out, "--num-samples", 2,
            "--max-new-tokens", 4)
    assert r.exit_code == 1, r.output
    assert "Error: ZeroDivisionError: a bug in scoring" in r.stderr
    assert read_manifest(out)["status"] == "incomplete"  # not `running`: the same command resumes it
    assert (out / "candidates.jsonl").is_file()  # the candidates drawn are kept


def test_main_turns_a_crash_into_exit_1_not_an_attribute_error(tiny_model, tmp_path, monkeypatch, capsys):
    """The console entry point itself (it used to name an exception class typer no longer has)."""
    import chainforge.stages.evaluate as evaluate
    from chainforge import cli

    def broken(config):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(evaluate, "run", broken)
    monkeypatch.setattr(sys, "argv", ["chainforge", "eval", "--model", str(tiny_model), "--data", "d.jsonl",
                                      "--output", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "Error: RuntimeError: disk on fire" in err and "AttributeError" not in err


def _recipe(tmp_path, stages, **extra):
    prompts = write_jsonl(tmp_path / "train.jsonl", ROWS)
    recipe = {"run_dir": str(tmp_path / "run"), "prompts": str(prompts), "stages": stages, **extra}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_sigint_during_a_recipe_stage_exits_130_and_the_same_command_resumes(tmp_path):
    from helpers.fake_apis import FakeDeepSeek

    n = 30
    prompts = write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"P{i}: 6 x 7?", "answer": "42"} for i in range(n)])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "prompts": str(prompts),
                                      "stages": [{"name": "collect", "command": "collect", "concurrency": 2}]}))
    out = tmp_path / "run" / "00-collect"
    with FakeDeepSeek(latency=0.15) as server:
        env = dict(os.environ, DEEPSEEK_API_KEY=server.api_key, DEEPSEEK_BASE_URL=server.url, PYTHONPATH=str(ROOT))
        cmd = [sys.executable, "-m", "chainforge", "run", str(recipe)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=sigint_default)
        journal = out / "journal.jsonl"
        while not (journal.is_file() and journal.read_text().count("\n") >= 3):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        assert "Traceback" not in stderr and "interrupted" in stderr
        assert read_manifest(out)["status"] == "incomplete"
        done = [json.loads(line)["prompt"] for line in journal.read_text().splitlines()]
        assert 3 <= len(done) < n
        state = json.loads((tmp_path / "run" / "run.json").read_text())
        assert state["stages"]["collect"]["status"] == "failed (exit 130)"

        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "[00-collect] unfinished: resuming" in r.stderr
        assert read_manifest(out)["status"] == "complete"
        assert all(server.attempts[p] == 1 for p in done)  # finished work was not paid for twice


def test_eval_after_every_training_stage_with_the_delta_to_its_input(cli, tiny_model, tmp_path):
    test = write_jsonl(tmp_path / "test.jsonl", ROWS[:2])
    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": r["prompt"], "completion": r["answer"]} for r in ROWS])
    sft = {"command": "sft", "data": str(data), "max_steps": 1, "batch_size": 2, "max_new_tokens": 4}
    recipe = _recipe(tmp_path, [{"name": "warm", **sft}, {"name": "more", **sft}],
                     model=str(tiny_model), eval_data=str(test),
                     eval={"num_samples": 2, "max_new_tokens": 4, "limit": 2})
    r = cli("run", recipe)
    assert r.exit_code == 0, r.output
    evals = tmp_path / "run" / "evals"
    assert sorted(p.name for p in evals.iterdir()) == ["00-base", "00-warm", "01-more"]
    base, warm, more = (read_manifest(evals / n) for n in ("00-base", "00-warm", "01-more"))
    assert all(m["status"] == "complete" and m["stage"] == "eval" for m in (base, warm, more))
    assert base["config"]["model"] == str(tiny_model) and base["config"]["compare"] is None
    assert warm["config"]["model"] == str(tmp_path / "run" / "00-warm")
    assert warm["config"]["compare"] == str(evals / "00-base")  # the first stage's input is the base
    assert more["config"]["compare"] == str(evals / "00-warm")  # the next one's input is the first's output
    # every evaluation samples the same way: the recipe's `eval:` options over eval's defaults
    for m in (base, warm, more):
        assert (m["config"]["num_samples"], m["config"]["max_new_tokens"], m["config"]["temperature"]) == (2, 4, 0.6)
        assert m["config"]["data"] == str(test) and m["metrics"]["k"] == 2
    state = json.loads((tmp_path / "run" / "run.json").read_text())
    assert set(state["evals"]) == {"00-base", "00-warm", "01-more"} and state["decontaminate"] is True

    r = cli("run", recipe)  # nothing changed: every stage and evaluation is skipped
    assert r.exit_code == 0, r.output
    assert r.stderr.count("skipped") == 5, r.stderr


def test_no_evaluations_without_eval_data_or_when_turned_off(tmp_path, tiny_model):
    from chainforge.stages.run import load_recipe, plan_stages

    recipe = _recipe(tmp_path, [{"name": "s", "command": "sft", "data": "d.jsonl"}], model=str(tiny_model),
                     eval_every_stage=True)
    from chainforge.errors import UsageError
    from chainforge.stages import run as run_stage

    with pytest.raises(UsageError, match="needs `eval_data`"):
        run_stage.run(str(recipe))
    assert not (tmp_path / "run").exists()
    assert plan_stages(load_recipe(recipe))[0].config.data.endswith("d.jsonl")


def test_a_recipe_stage_reads_an_option_file_and_its_own_keys_win(tmp_path, tiny_model):
    from chainforge.stages.run import load_recipe, plan_stages

    (tmp_path / "opts").mkdir()
    (tmp_path / "opts" / "sft-small.yaml").write_text("learning_rate: 3.0e-4\nmax_steps: 7\nlora: true\n")
    recipe = _recipe(tmp_path, [{"name": "s", "command": "sft", "config": "opts/sft-small.yaml", "max_steps": 2,
                                 "data": "d.jsonl"}], model=str(tiny_model))
    cfg = plan_stages(load_recipe(recipe))[0].config
    assert (cfg.learning_rate, cfg.max_steps, cfg.lora) == (3e-4, 2, True)
    (tmp_path / "opts" / "sft-small.yaml").write_text("learning_rat: 1\n")
    with pytest.raises(Exception, match="unknown option 'learning_rat'"):
        load_recipe(recipe)


def test_a_recipe_can_forbid_custom_rewards_for_every_stage(tmp_path, tiny_model):
    from chainforge.errors import UsageError
    from chainforge.stages import run as run_stage
    from chainforge.stages.run import load_recipe, plan_stages

    stages = [{"name": "rl", "command": "grpo"}, {"name": "pick", "command": "reject"},
              {"name": "own", "command": "reject", "custom_rewards": True, "rewards": "helpers.rewards:close_to_19"}]
    recipe = _recipe(tmp_path, stages, model=str(tiny_model), custom_rewards=False)
    plan = {s.name: s.config for s in plan_stages(load_recipe(recipe))}
    assert plan["rl"].custom_rewards is False and plan["pick"].custom_rewards is False
    assert plan["own"].custom_rewards is True  # a stage's own key wins

    stages[0]["rewards"] = "accuracy,helpers.rewards:close_to_19"
    recipe = _recipe(tmp_path, stages, model=str(tiny_model), custom_rewards=False)
    with pytest.raises(UsageError, match="stage 'rl' .*custom rewards are turned off"):
        run_stage.run(str(recipe))
    assert not (tmp_path / "run").exists()  # refused before the first stage ran


def test_decontaminate_runs_from_the_cli_and_its_rows_become_the_recipes_prompts(cli, tmp_path, tiny_model):
    from chainforge.stages.run import load_recipe, plan_stages

    train = write_jsonl(tmp_path / "train.jsonl", [
        {"prompt": "A train leaves the station at noon going sixty miles per hour east"},
        {"prompt": "What is the sum of the first ten positive whole numbers?"}])
    test = write_jsonl(tmp_path / "test.jsonl", [
        {"prompt": "Suppose a train leaves the station at noon going sixty miles per hour east; when?"}])
    out = tmp_path / "clean"
    r = cli("decontaminate", "--data", train, "--against", test, "--output", out, "--ngram", 8)
    assert r.exit_code == 0, r.output
    assert read_manifest(out)["metrics"]["removed"] == 1 and read_manifest(out)["status"] == "complete"

    recipe = _recipe(tmp_path, [{"name": "clean", "command": "decontaminate"}, {"name": "pick", "command": "reject"}],
                     model=str(tiny_model), eval_data=str(test))
    clean, pick = plan_stages(load_recipe(recipe))
    assert clean.config.against == [str(test)] and clean.config.data == str(tmp_path / "train.jsonl")
    assert pick.config.data == str(clean.output)  # later stages read the decontaminated prompts


def test_split_and_subset_reach_the_loader_from_every_reading_stage(cli, tiny_model, tmp_path):
    repo = tmp_path / "repo" / "data"
    repo.mkdir(parents=True)
    write_jsonl(repo / "train.jsonl", [{"prompt": "train question", "answer": "1"}])
    write_jsonl(repo / "test.jsonl", [{"prompt": "test question", "answer": "2"}])
    out = tmp_path / "e"
    r = cli("eval", "--model", tiny_model, "--data", tmp_path / "repo", "--split", "test", "--output", out,
            "--temperature", 0, "--max-new-tokens", 4)
    assert r.exit_code == 0, r.output
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [x["prompt"] for x in results] == ["test question"]
    assert read_manifest(out)["config"]["split"] == "test"
    r = cli("reject", "--model", tiny_model, "--data", tmp_path / "repo", "--split", "validation", "--output",
            tmp_path / "r")
    assert r.exit_code == 2 and "no split 'validation'" in r.stderr and not (tmp_path / "r").exists()
    for command in ("collect", "sft", "grpo", "reject", "distill", "eval"):
        assert {"split", "subset"} <= set(stage_module_config(command).option_names()), command


def stage_module_config(command):
    from chainforge.stages import stage_module

    return stage_module(command).CONFIG
