"""GRPO honesty and the direction of learning: rollouts.jsonl, the KL guard, and (slow) a test that
fails when a regression turns learning off or around."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chainforge import rollouts
from chainforge.formats import write_super_cot
from chainforge.rewards import get_reward
from helpers.files import write_jsonl

FAST = ("--num-generations", "2", "--prompts-per-step", "2", "--max-new-tokens", "8", "--lr", "1e-3")
# Tests that need the policy to MOVE need groups with different rewards: about 13 % of the tiny random
# model's 8-token draws score above 0 on close_to_19, so 3 steps of 2 groups of 2 are all-equal (no
# gradient) about half the time, while with groups of 8 that happens about once in 800 runs.
GROUPS_OF_8 = ("--num-generations", "8", "--prompts-per-step", "2", "--max-new-tokens", "8", "--lr", "1e-3")


def arithmetic(n: int, start: int = 0) -> list[dict]:
    return [{"prompt": f"What is {a} + {a + 1}?", "answer": str(2 * a + 1)} for a in range(start, start + n)]


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


# ---- rollouts.jsonl and the KL guard, without a trainer -----------------------------------------------

def test_rollout_records_hold_each_reward_the_total_and_the_question():
    chat = [{"role": "system", "content": "Think."}, {"role": "user", "content": "What is 6 - 5?"}]
    recs = rollouts.rollout_records(3, [chat, "What is 2 + 2?"], [[{"role": "assistant", "content": "a"}], "b"],
                                    {"accuracy": [1.0, float("nan")], "format": [0.2, 0.0]}, [1.0, 0.5],
                                    advantages=[0.7, -0.7], answers=["1", 4])
    assert recs[0] == {"step": 3, "prompt": "What is 6 - 5?", "answer": "1", "completion": "a",
                       "rewards": {"accuracy": 1.0, "format": 0.2}, "reward": 1.1, "advantage": 0.7}
    assert recs[1]["rewards"] == {"accuracy": None, "format": 0.0} and recs[1]["reward"] == 0.0
    assert recs[1]["answer"] == "4" and recs[1]["completion"] == "b"
    with pytest.raises(ValueError):
        rollouts.rollout_records(0, ["p"], ["c"], {"accuracy": [1.0]}, [1.0, 1.0])


def test_rollout_log_drops_the_steps_a_resume_redoes(tmp_path):
    log = rollouts.RolloutLog(tmp_path)
    log.write([{"step": s, "completion": str(s)} for s in (0, 0, 1, 2, 3)])
    with open(log.path, "a") as fh:
        fh.write('{"step": 4, "compl')  # torn by a kill
    resumed = rollouts.RolloutLog(tmp_path)
    resumed.write([{"step": 2, "completion": "again"}])
    resumed.write([{"step": 3, "completion": "again"}])  # only the first write of a run drops lines
    assert [(x["step"], x["completion"]) for x in lines(log.path)] == [
        (0, "0"), (0, "0"), (1, "1"), (2, "again"), (3, "again")]


def test_kl_guard_warns_once_per_jump_with_the_step_and_value():
    said = []
    guard = rollouts.KLGuard(0.1, warn=said.append)
    results = [guard.check(step, kl) for step, kl in enumerate([0.0, 0.02, 0.36, 0.5, 0.05, None, 0.2], 1)]
    assert results == [False, False, True, False, False, False, True]
    assert len(said) == 2 and said[0].startswith("warning: grpo step 3: KL to the reference 0.36 > 0.1")
    assert "--learning-rate" in said[0] and "\n" not in said[0]


def test_grpo_warmup_default_is_on():
    from chainforge.stages.grpo import GrpoConfig

    assert GrpoConfig(model="m", data="d", output="o").warmup_ratio == rollouts.GRPO_WARMUP_RATIO > 0


# ---- a real GRPO run on the tiny model --------------------------------------------------------------

def test_grpo_logs_every_rollout_with_its_rewards(cli, tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", arithmetic(6))
    out = tmp_path / "rl"
    r = cli("grpo", "--model", tiny_model, "--data", data, "--output", out, "--max-steps", "2",
            "--rewards", "accuracy,format=0.5", "--save-steps", "100", *FAST)
    assert r.exit_code == 0, r.stderr
    rows = lines(out / "rollouts.jsonl")
    assert [x["step"] for x in rows] == [0] * 4 + [1] * 4  # 2 prompts × 2 generations per step
    questions = {x["prompt"]: x["answer"] for x in arithmetic(6)}
    for x in rows:
        assert questions[x["prompt"]] == x["answer"]
        # what was logged is what the reward function gives for that completion
        assert x["rewards"]["accuracy"] == get_reward("accuracy")([x["completion"]], answer=[x["answer"]])[0]
        assert x["rewards"]["format"] == get_reward("format")([x["completion"]])[0]
        assert x["reward"] == pytest.approx(x["rewards"]["accuracy"] + 0.5 * x["rewards"]["format"])
        assert isinstance(x["advantage"], float)
    for step in (0, 1):  # advantages are relative to the group: each group's sum is ~0
        group = [x["advantage"] for x in rows if x["step"] == step][:2]
        assert sum(group) == pytest.approx(0.0, abs=1e-5)


def test_grpo_warns_when_kl_jumps(cli, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(rollouts, "KL_WARN", 1e-9)  # any movement away from the reference counts
    data = write_jsonl(tmp_path / "p.jsonl", arithmetic(6))
    r = cli("grpo", "--model", tiny_model, "--data", data, "--output", tmp_path / "rl", "--max-steps", "3",
            "--rewards", "helpers.rewards:close_to_19", "--save-steps", "100", *GROUPS_OF_8)
    assert r.exit_code == 0, r.stderr
    warnings = [x for x in r.stderr.splitlines() if x.startswith("warning: grpo step") and ": KL to the" in x]
    assert len(warnings) == 1, r.stderr  # once, not at every step after the first


# ---- the direction of the GRPO effect (slow) -----------------------------------------------------------

def away_from_19(completions, **kw) -> list[float]:
    """The negation of helpers.rewards.close_to_19: a policy that follows it must move AWAY from "19"."""
    from helpers.rewards import close_to_19

    return [1.0 - v for v in close_to_19(completions, **kw)]


def held_out_closeness(model_dir: Path, prompts: list[str]) -> float:
    """Mean close_to_19 of 8 sampled completions per HELD-OUT prompt (seeded), with the chat the
    trainer used (Super CoT system turn)."""
    from helpers.rewards import close_to_19

    from chainforge.models import load_model, load_tokenizer, resolve_model
    from chainforge.sampling import generate, resolve_system_prompt

    ref = resolve_model(str(model_dir))
    model, tok = load_model(ref), load_tokenizer(ref)
    drawn = generate(model, tok, prompts, n=8, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=123,
                     system_prompt=resolve_system_prompt(None))
    scores = [v for comps in drawn for v in close_to_19([c.text for c in comps])]
    return sum(scores) / len(scores)


def _grpo(cli, model, tmp_path, name, reward, *extra) -> Path:
    data = write_jsonl(tmp_path / "p.jsonl", arithmetic(9))
    out = tmp_path / name
    r = cli("grpo", "--model", model, "--data", data, "--output", out, "--rewards", reward,
            "--max-steps", "30", "--num-generations", "8", "--prompts-per-step", "2", "--max-new-tokens", "8",
            "--save-steps", "100", "--seed", "0", "--warmup-ratio", "0", *extra)
    assert r.exit_code == 0, r.stderr
    return out


HELD_OUT = [x["prompt"] for x in arithmetic(6, start=50)]  # never trained on


@pytest.mark.slow
def test_grpo_moves_held_out_behaviour_the_rewarded_way(cli, tiny_model, tmp_path):
    """30 GRPO steps on train prompts, the behaviour measured on prompts never trained on, for a
    reward and for its negation: a flipped reward sign or advantage, advantages that ignore the
    reward, a loss that ignores the completion mask, or an optimizer that does not step all break
    the expected order  flipped ≤ start < rewarded."""
    before = held_out_closeness(tiny_model, HELD_OUT)
    toward = held_out_closeness(_grpo(cli, tiny_model, tmp_path, "toward", "helpers.rewards:close_to_19",
                                      "--lr", "5e-3"), HELD_OUT)
    away = held_out_closeness(_grpo(cli, tiny_model, tmp_path, "away", "test_learning:away_from_19",
                                    "--lr", "5e-3"), HELD_OUT)
    print(f"held-out closeness to '19': start {before:.3f}, rewarded {toward:.3f}, negated reward {away:.3f}")
    assert toward > before + 0.05, (before, toward)
    assert away < toward - 0.05 and away <= before + 0.02, (before, toward, away)


def test_grpo_with_lora_trains_and_merges_the_adapters(cli, tiny_model, tmp_path):
    """LoRA adapters that are not applied, not stepped or not merged leave the saved model equal to
    its start; merged adapters change the targeted linear layers and nothing else. (On the tiny
    model, 15-30 LoRA steps at lr 3e-2 move the weights but not yet the held-out behaviour, so the
    direction test above runs full fine-tuning.)"""
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "p.jsonl", arithmetic(6))
    out = tmp_path / "lora"
    r = cli("grpo", "--model", tiny_model, "--data", data, "--output", out, "--max-steps", "3", "--rewards",
            "helpers.rewards:close_to_19", "--lora", "--lora-r", "8", "--lora-alpha", "16", "--save-steps", "100",
            "--warmup-ratio", "0", *GROUPS_OF_8[:-2], "--lr", "3e-2")
    assert r.exit_code == 0, r.stderr
    start, trained = load_file(str(tiny_model / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(start) == set(trained)
    moved = {k for k in start if not (start[k].float() == trained[k].float()).all()}
    assert any(k.endswith("proj.weight") for k in moved), "no adapted layer changed"
    assert all(k.endswith("proj.weight") for k in moved), sorted(moved)  # embeddings, norms untouched
