"""`chainforge grpo`: real TRL GRPOTrainer runs on the tiny model (a few steps each), the resume path,
the batch rule, the prompt preparation, and every bad input. The learning-signal run is slow."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from chainforge.errors import UsageError
from chainforge.formats import SUPER_COT_SYSTEM_PROMPT
from helpers.cli import assert_exit_2
from helpers.files import manifest, write_jsonl
from helpers.rows import arithmetic

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTED_METRICS = ("reward", "kl", "format_rate", "expansion_rate", "completion_tokens", "generation_time_share")
# Small and fast: 2 prompts × 2 completions of ≤ 8 tokens per step.
FAST = ("--num-generations", "2", "--prompts-per-step", "2", "--max-new-tokens", "8", "--lr", "1e-3")


def tensorboard_scalars(out: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points = []
    for events in sorted((out / "runs").rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            points += [(e.step, e.value) for e in acc.Scalars(tag)]
    return sorted(points)


# ---- real runs ----------------------------------------------------------------------------------

def test_crash_then_resume_gives_a_complete_checkpoint(cli, tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", arithmetic())
    out = tmp_path / "rl"
    args = ["grpo", "--model", tiny_model, "--data", data, "--output", out, "--rewards",
            "helpers.rewards:crashes_after_step_2", "--max-steps", "3", "--save-steps", "2", *FAST]

    crashed = cli(*args, env={"CHAINFORGE_TEST_CRASH": "1"})
    assert crashed.exit_code == 1, crashed.stderr
    assert "injected crash" in crashed.stderr and "resume with the same command" in crashed.stderr
    assert manifest(out)["status"] == "incomplete"
    assert (out / "checkpoint-2").is_dir() and not (out / "model.safetensors").exists()

    resumed = cli(*args)
    assert resumed.exit_code == 0, resumed.stderr
    assert "resuming from checkpoint-2" in resumed.stderr
    m = manifest(out)
    assert m["status"] == "complete" and m["stage"] == "grpo"
    assert m["metrics"]["steps"] == 3
    assert m["metrics"]["reward/crashes_after_step_2"] is not None
    assert [i["path"] for i in m["inputs"]] == [str(data), str(tiny_model)]
    assert not list(out.glob("checkpoint-*")), "a complete output keeps no resumable checkpoints"


def test_default_rewards_lora_and_config_file(cli, tiny_model, tmp_path):
    # A collect output has `reference`, not `answer`: it must reach accuracy/expansion as `answer`.
    data = write_jsonl(tmp_path / "p.jsonl", arithmetic(4, answer_key="reference"))
    out = tmp_path / "rl"
    r = cli("grpo", "--config", ROOT / "configs" / "grpo-cpu-small.yaml", "--model", tiny_model, "--data", data,
            "--output", out, "--max-steps", "2", "--lora", "--lora-r", "4", "--lora-alpha", "8",
            "--batch-size", "4", "--num-generations", "2", "--max-new-tokens", "8", "--logging-steps", "1")
    assert r.exit_code == 0, r.stderr
    m = manifest(out)
    assert m["status"] == "complete"
    metrics = m["metrics"]
    for key in DOCUMENTED_METRICS + ("reward/accuracy", "reward/format", "reward/expansion"):
        assert key in metrics, key
    # accuracy is None only when no reference arrived; random completions are simply wrong.
    assert metrics["reward/accuracy"] == 0.0 and metrics["reward/format"] == 0.0
    assert metrics["kl"] is not None and metrics["kl"] >= 0  # beta 0.04: the reference (adapter-free) model
    assert 0.0 < metrics["generation_time_share"] < 1.0
    assert metrics["format_rate"] == 0.0 and metrics["expansion_rate"] == 0.0
    assert 1 <= metrics["completion_tokens"] <= 8
    # the file's values where the command line is silent (temperature 0.9 and learning rate 5e-6,
    # not the built-in 1.0 and 1e-6), the command line's where both give one (4 generations in the file)
    config = m["config"]
    assert (config["temperature"], config["learning_rate"], config["num_generations"]) == (0.9, 5e-6, 2)
    # and the trainer used them: its first step ran at the file's rate (warmup_ratio 0 in the file too)
    assert tensorboard_scalars(out, "train/learning_rate")[0] == (1, pytest.approx(5e-6))
    assert m["config"]["rewards"] == "accuracy,format,expansion"
    assert m["config"]["max_new_tokens"] == 8  # a token budget is not a secret token
    # The LoRA adapter was merged: a plain checkpoint that from_pretrained loads.
    # (random completions all score 0: no advantage, so the weights need not move here; the LoRA
    # training itself is checked in test_learning.py)
    from helpers.checkpoints import load_checkpoint

    assert not (out / "adapter_config.json").exists()
    model, changed = load_checkpoint(out, tiny_model, trained=False)
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert all(k.endswith("proj.weight") for k in changed), sorted(changed)  # the adapted layers only
    for tag in ("train/reward", "train/kl", "train/format_rate", "train/generation_time_share"):
        assert len(tensorboard_scalars(out, tag)) == 2, tag


@pytest.mark.slow
def test_learning_signal_reward_rises(cli, tiny_model, tmp_path):
    """Rewards reach the loss and the policy moves their way: a random tiny model learns to answer
    close to "19" within 30 CPU steps (seeded)."""
    data = write_jsonl(tmp_path / "p.jsonl", arithmetic(9))
    out = tmp_path / "rl"
    r = cli("grpo", "--model", tiny_model, "--data", data, "--output", out, "--rewards", "helpers.rewards:close_to_19",
            "--max-steps", "30", "--num-generations", "8", "--prompts-per-step", "2", "--max-new-tokens", "8",
            "--lr", "5e-3", "--save-steps", "100", "--seed", "0")
    assert r.exit_code == 0, r.stderr
    rewards = [v for _, v in tensorboard_scalars(out, "train/reward")]
    assert len(rewards) == 30
    first, last = sum(rewards[:6]) / 6, sum(rewards[-6:]) / 6
    print(f"mean reward: first 6 steps {first:.3f}, last 6 steps {last:.3f}")
    assert last > first + 0.05 and last > 2 * first, rewards


# ---- the batch rule, prompts and answers (no model) ---------------------------------------------

def opts(**kw):
    from chainforge.stages.grpo import GrpoConfig

    return GrpoConfig(**{"model": "m", "data": "d", "output": "o", **kw})


def test_batch_is_derived_from_prompts_per_step():
    from chainforge.stages.grpo import resolve_batch

    assert resolve_batch(opts()) == (16, 1)
    assert resolve_batch(opts(num_generations=4, prompts_per_step=3, grad_accum=2)) == (12, 2)
    assert resolve_batch(opts(batch_size=4, grad_accum=2)) == (4, 2)  # 4 × 2 = one group of 8


def test_batch_that_splits_a_group_names_the_numbers(monkeypatch):
    from chainforge.stages.grpo import resolve_batch

    with pytest.raises(UsageError) as err:
        resolve_batch(opts(batch_size=6, num_generations=4))
    assert "--batch-size 6 × --grad-accum 1 = 6" in err.value.message
    assert "use --batch-size 4 or 8" in err.value.message and "--num-generations 2 / 3 / 6" in err.value.message
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError) as err:
        resolve_batch(opts(batch_size=3, num_generations=8))
    assert "× 2 processes = 6" in err.value.message and "use --batch-size 4" in err.value.message


def test_prompts_become_chats_and_answers_arrive_as_answer(tmp_path):
    from chainforge.stages.grpo import load_prompts

    rows = [{"question": "What is 1 + 1?", "gold": "2", "answer": "stale", "completions": "x"}]
    data = write_jsonl(tmp_path / "p.jsonl", rows)
    ds = load_prompts(opts(data=str(data), prompt_column="question", answer_column="gold"), ["accuracy"])
    assert sorted(ds.column_names) == ["answer", "prompt"]
    row = ds[0]
    assert row["answer"] == "2"
    assert row["prompt"] == [{"role": "system", "content": SUPER_COT_SYSTEM_PROMPT},
                             {"role": "user", "content": "What is 1 + 1?"}]
    ds = load_prompts(opts(data=str(data), prompt_column="question", answer_column="gold", system_prompt=""), [])
    assert ds[0]["prompt"] == [{"role": "user", "content": "What is 1 + 1?"}]

    chats = [{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"}],
              "reference": "4"}]
    ds = load_prompts(opts(data=str(write_jsonl(tmp_path / "c.jsonl", chats))), ["accuracy"])
    assert ds[0]["prompt"] == chats[0]["prompt"] and ds[0]["answer"] == "4"
    # a chat prompt without a system turn gets the one every other stage samples under
    bare = [{"prompt": [{"role": "user", "content": "2 + 2?"}], "reference": "4"}]
    ds = load_prompts(opts(data=str(write_jsonl(tmp_path / "b.jsonl", bare))), ["accuracy"])
    assert ds[0]["prompt"] == [{"role": "system", "content": SUPER_COT_SYSTEM_PROMPT},
                               {"role": "user", "content": "2 + 2?"}]


# ---- bad input: exit 2, one line, nothing created -----------------------------------------------

@pytest.fixture
def prompts(tmp_path) -> Path:
    return write_jsonl(tmp_path / "p.jsonl", arithmetic())


@pytest.mark.parametrize("extra,fragments", [
    (["--rewards", "accuracy,brevity"], ["unknown reward 'brevity'", "accuracy", "expansion", "overlong"]),
    (["--rewards", "no_such_module:fn"], ["cannot load reward"]),
    (["--rewards", "format=lots"], ["not a number"]),
    (["--rewards", "format,helpers.rewards:close_to_19", "--no-custom-rewards"],
     ["--rewards helpers.rewards:close_to_19: custom rewards are turned off", "accuracy"]),
    (["--num-generations", "1"], ["--num-generations must be at least 2"]),
    (["--beta", "-0.1"], ["--beta must be ≥ 0"]),
    (["--temperature", "0"], ["--temperature must be > 0"]),
    (["--loss-type", "ppo"], ["--loss-type 'ppo'", "dapo"]),
    (["--batch-size", "6", "--num-generations", "4"], ["not a multiple of --num-generations 4",
                                                       "use --batch-size 4 or 8"]),
    (["--prompts-per-step", "7", "--num-generations", "2"], ["--data has 6 prompt(s)", "takes 7"]),
])
def test_bad_options(cli, tiny_model, prompts, tmp_path, extra, fragments):
    out = tmp_path / "rl"
    r = cli("grpo", "--model", tiny_model, "--data", prompts, "--output", out, *extra)
    assert_exit_2(r, *fragments)
    assert not out.exists()


def test_accuracy_without_answer_column(cli, tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "What is 1 + 1?", "level": 1}] * 4)
    out = tmp_path / "rl"
    r = cli("grpo", "--model", tiny_model, "--data", data, "--output", out)
    assert_exit_2(r, "no answer column 'answer' (nor 'reference')", "columns found: prompt, level",
                   "accuracy, expansion")
    assert not out.exists()


def test_missing_prompt_column_and_empty_prompt(cli, tiny_model, tmp_path):
    out = tmp_path / "rl"
    data = write_jsonl(tmp_path / "q.jsonl", [{"question": "1 + 1?", "answer": "2"}] * 4)
    assert_exit_2(cli("grpo", "--model", tiny_model, "--data", data, "--output", out), "no column 'prompt'")
    data = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "  ", "answer": "2"}] * 4)
    assert_exit_2(cli("grpo", "--model", tiny_model, "--data", data, "--output", out), "row 0")
    assert not out.exists()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_use_vllm_without_vllm_names_the_extra(cli, tiny_model, prompts, tmp_path):
    out = tmp_path / "rl"
    r = cli("grpo", "--model", tiny_model, "--data", prompts, "--output", out, "--use-vllm")
    assert_exit_2(r, "pip install 'chainforge-r1[vllm]'")
    assert not out.exists()


def test_shipped_configs_use_known_options(cli, tiny_model, tmp_path):
    # Every key of the shipped option files is a grpo option: validation gets past --config to the data.
    for name in ("grpo-cpu-small.yaml", "grpo-qwen2.5-7b.yaml"):
        r = cli("grpo", "--config", ROOT / "configs" / name, "--model", tiny_model,
                "--data", tmp_path / "missing.jsonl", "--output", tmp_path / "rl")
        expected = "--data not found" if (importlib.util.find_spec("vllm") or "7b" not in name) else "vllm"
        assert_exit_2(r, expected)
