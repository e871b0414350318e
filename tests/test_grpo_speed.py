"""The faster CPU GRPO step: completion-only log-probs (equal to TRL's fused path), rollouts from the
sampling engine through TRL's rollout hook, and `--precision` (bf16 where the hardware has it).
Speed itself is measured by scripts/bench_grpo.py, never asserted here."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers.files import write_jsonl

FAST = ("--num-generations", "2", "--prompts-per-step", "2", "--max-new-tokens", "8", "--lr", "1e-3")


def _tiny(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(tiny_model)


def _batch(tokenizer, completion_len: int = 6, group: int = 1):
    import torch

    prompts = [p for p in ["What is 12 + 7?", "The quick brown fox jumps"] for _ in range(group)]
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(e) for e in encoded)
    torch.manual_seed(0)
    completions = torch.randint(5, len(tokenizer) - 1, (len(prompts), completion_len))
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, e in enumerate(encoded):  # left-padded prompts, as TRL builds them
        ids[r, width - len(e):] = torch.tensor(e)
        mask[r, width - len(e):] = 1
    comp_mask = torch.ones_like(completions)
    comp_mask[1, -2:] = 0  # a completion that ended early: padding after it
    comp_mask[-1, -3:] = 0
    return torch.cat([ids, completions], 1), torch.cat([mask, comp_mask], 1), completion_len


@pytest.mark.parametrize("entropy,group", [(False, 1), (True, 1), (False, 3), (True, 4)])
def test_completion_logps_equal_trls_fused_lm_head_path_values_and_gradients(tiny_model, entropy, group,
                                                                              monkeypatch):
    """group > 1: each prompt's rows come in a run, as TRL lays out a group, and the prompt runs
    through the model once for its rows (left padding included): still TRL's values and gradients."""
    import copy

    import torch
    import contextlib

    from trl.trainer.utils import add_fused_lm_head

    from chainforge.stages import grpo
    from chainforge.stages.grpo import completion_logps

    shared = []
    real = grpo._shared_prompt_logits
    monkeypatch.setattr(grpo, "_shared_prompt_logits", lambda *a: shared.append(real(*a)) or shared[-1])
    ours, tokenizer = _tiny(tiny_model)
    theirs = copy.deepcopy(ours)
    add_fused_lm_head(theirs, temperature=0.7, outputs=("log_probs", "entropy"))  # as GRPOTrainer patches it
    ids, mask, keep = _batch(tokenizer, group=group)
    # fp32 on both sides (accelerate's state is a process-wide singleton: another test's bf16 would leak in)
    trainer = SimpleNamespace(accelerator=SimpleNamespace(autocast=contextlib.nullcontext), temperature=0.7)

    logps, entropies, aux = completion_logps(trainer, ours, ids, mask, keep, None, entropy)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :-keep] = -100
    out = theirs(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    ref = out.log_probs[:, -keep:]
    valid = mask[:, -keep:].bool()
    assert logps.shape == ref.shape == (2 * group, keep) and aux is None
    assert [x is not None for x in shared] == [group > 1]  # the prompts ran once per group
    torch.testing.assert_close(logps[valid], ref[valid], rtol=1e-4, atol=1e-4)
    if entropy:
        torch.testing.assert_close(entropies[valid], out.entropy[:, -keep:][valid], rtol=1e-4, atol=1e-4)
    else:
        assert entropies is None

    (logps * valid).sum().backward()
    (ref * valid).sum().backward()
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert a.grad is not None and b.grad is not None, name
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5, msg=name)
    assert any(p.grad.abs().sum() > 0 for p in ours.parameters())


def test_completion_only_path_is_for_cpu_text_only_runs():
    import torch

    from chainforge.stages.grpo import completion_only_logps_apply

    cpu = torch.device("cpu")
    assert completion_only_logps_apply(cpu, False, {"pixel_values": None})
    assert not completion_only_logps_apply(cpu, True, {})  # MoE aux loss: TRL's path
    assert not completion_only_logps_apply(cpu, False, {"pixel_values": torch.zeros(1)})
    assert not completion_only_logps_apply(torch.device("cuda"), False, {})


def _rollout_trainer(model, tokenizer, step: int = 0):
    return SimpleNamespace(processing_class=tokenizer, model=model, state=SimpleNamespace(global_step=step),
                           accelerator=SimpleNamespace(unwrap_model=lambda m: m))


def test_engine_rollouts_return_trls_fields_in_trls_order(tiny_model):
    from chainforge.rollouts import EngineRollouts
    from chainforge.sampling import render_prompt

    model, tokenizer = _tiny(tiny_model)
    chats = [[{"role": "user", "content": "What is 12 + 7?"}], [{"role": "user", "content": "What is 3 + 4?"}]]
    prompts = [chats[0]] * 3 + [chats[1]] * 3  # TRL repeats each prompt num_generations times in a row
    rollouts = EngineRollouts(3, temperature=1.0, top_p=1.0, max_new_tokens=12, seed=0, bf16=False)
    out = rollouts(prompts, _rollout_trainer(model, tokenizer))

    assert set(out) == {"prompt_ids", "completion_ids", "logprobs"} and out["logprobs"] is None
    assert len(out["prompt_ids"]) == len(out["completion_ids"]) == 6
    for i, chat in enumerate(prompts):
        rendered = tokenizer(render_prompt(tokenizer, chat), add_special_tokens=False)["input_ids"]
        assert out["prompt_ids"][i] == rendered
    eos = tokenizer.eos_token_id
    for ids in out["completion_ids"]:
        assert 1 <= len(ids) <= 12
        # a finished completion ends with its EOS (TRL keeps it); an unfinished one is cut at the cap
        assert (ids[-1] == eos and eos not in ids[:-1]) or (len(ids) == 12 and eos not in ids)
    assert len({tuple(c) for c in out["completion_ids"][:3]}) > 1, "a group of identical draws teaches nothing"

    # reproducible from the seed; a later call (another step) draws afresh
    again = EngineRollouts(3, temperature=1.0, top_p=1.0, max_new_tokens=12, seed=0, bf16=False)
    assert again(prompts, _rollout_trainer(model, tokenizer))["completion_ids"] == out["completion_ids"]
    later = rollouts(prompts, _rollout_trainer(model, tokenizer, step=1))
    assert later["completion_ids"] != out["completion_ids"]


def test_engine_rollouts_sample_the_live_policy_under_one_autocast(tiny_model):
    """TRL's trainer wraps the policy's forward in a closure over the module that enters bf16
    autocast on every call. The rollout samples that live module (a copy would sample another
    policy, or, with TRL's closure, the same one for nothing) with an autocast of its own held
    around the whole rollout, so the per-call autocast never drops the nesting to 0 and the casts
    of the fp32 weights are made once, not at every decode step."""
    import torch

    from chainforge.rollouts import EngineRollouts

    model, tokenizer = _tiny(tiny_model)
    model.train()
    seen = []
    forward = type(model).forward

    def spy(self, *a, **kw):
        level = torch.autocast_increment_nesting()  # the nesting level, this call's own included
        torch.autocast_decrement_nesting()
        seen.append((self is model, torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), level - 1,
                     next(self.parameters()).dtype))
        return forward(self, *a, **kw)

    type(model).forward = spy
    model.forward = torch.autocast("cpu", dtype=torch.bfloat16)(model.forward)  # as the trainer patches it
    try:
        EngineRollouts(2, 1.0, 1.0, 4, 0, bf16=True)([[{"role": "user", "content": "hi"}]] * 2,
                                                      _rollout_trainer(model, tokenizer))
    finally:
        type(model).forward = forward
    assert len(seen) >= 4  # a prefill and decode steps
    assert set(seen) == {(True, True, torch.bfloat16, 2, torch.float32)}, set(seen)
    assert not torch.is_autocast_enabled("cpu")
    assert next(model.parameters()).dtype == torch.float32 and model.training


def test_groups_fall_back_to_single_draws_when_prompts_are_not_in_runs():
    from chainforge.rollouts import _groups

    assert _groups(["a", "a", "b", "b"], 2) == ["a", "b"]
    assert _groups(["a", "b", "a", "b"], 2) == ["a", "b", "a", "b"]
    assert _groups(["a", "a", "a"], 2) == ["a", "a", "a"]


@pytest.mark.parametrize("sampler", ["engine", "trl"])
def test_grpo_trains_with_either_rollout_sampler_and_logs_its_step_time(cli, tiny_model, tmp_path, sampler):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"What is {a} + 1?", "answer": str(a + 1)} for a in range(4)])
    out = tmp_path / "rl"
    r = cli("grpo", "--model", tiny_model, "--data", data, "--output", out, "--max-steps", "2",
            "--rollout-sampler", sampler, *FAST)
    assert r.exit_code == 0, r.stderr
    metrics = json.loads((out / "chainforge.json").read_text())["metrics"]
    assert metrics["steps"] == 2 and metrics["seconds_per_step"] > 0
    assert 0 < metrics["generation_time_share"] < 1
    lines = [json.loads(x) for x in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 2 * 2 and {x["step"] for x in lines} == {0, 1}


# ---- precision ------------------------------------------------------------------------------------

@pytest.mark.parametrize("native", [True, False])
def test_precision_auto_follows_the_hardware_and_fp32_bf16_force_it(monkeypatch, native):
    import chainforge.models as models
    from chainforge import training

    monkeypatch.setattr(models, "native_bf16", lambda device=None: native)
    assert models.use_bf16("auto", "cpu") is native
    assert models.use_bf16("fp32", "cpu") is False and models.use_bf16("bf16", "cpu") is True
    flags = training.hardware("auto")
    assert flags["bf16"] is native and flags["use_cpu"] is True and flags["fp16"] is False
    assert training.hardware("fp32")["bf16"] is False


def test_training_args_carry_the_precision(monkeypatch, tmp_path):
    from trl import SFTConfig

    import chainforge.models as models
    from chainforge import training
    from chainforge.stages.sft import SftConfig

    monkeypatch.setattr(models, "native_bf16", lambda device=None: True)
    for precision, bf16 in (("auto", True), ("fp32", False), ("bf16", True)):
        config = SftConfig(model="smollm2", data="x.jsonl", output=str(tmp_path / "o"), precision=precision)
        args = training.trainer_args(config, tmp_path / "o", SFTConfig)
        assert args.bf16 is bf16 and args.use_cpu is True


@pytest.mark.parametrize("precision,dtype", [("bf16", "bfloat16"), ("fp32", "float32")])
def test_sampling_stages_load_the_model_in_the_chosen_precision(tiny_model, precision, dtype):
    from chainforge.models import resolve_model
    from chainforge.sampling.loading import EngineSpec, load_engine

    model, _ = load_engine(EngineSpec(resolve_model(str(tiny_model)), "hf", "auto", 0, precision))
    assert str(next(model.parameters()).dtype) == f"torch.{dtype}"


def test_eval_in_bf16_and_fp32_runs_and_records_the_precision(cli, tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "What is 1 + 1?", "answer": "2"}])
    for precision in ("bf16", "fp32"):
        out = tmp_path / f"eval-{precision}"
        r = cli("eval", "--model", tiny_model, "--data", data, "--output", out, "--num-samples", "2",
                "--max-new-tokens", "4", "--precision", precision)
        assert r.exit_code == 0, r.stderr
        assert json.loads((out / "chainforge.json").read_text())["config"]["precision"] == precision


def test_a_bad_rollout_sampler_is_one_line_exit_2(cli, tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "What is 1 + 1?", "answer": "2"}] * 4)
    r = cli("grpo", "--model", tiny_model, "--data", data, "--output", tmp_path / "rl", "--rollout-sampler", "vllm")
    assert r.exit_code == 2 and "vllm" in r.stderr and "engine" in r.stderr
    assert r.stderr.startswith("Error: ") and r.stderr.strip().count("\n") == 0, r.stderr
    assert not (tmp_path / "rl").exists()


def test_a_bad_precision_is_one_line_exit_2(cli, tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "What is 1 + 1?", "answer": "2"}])
    r = cli("eval", "--model", tiny_model, "--data", data, "--output", tmp_path / "e", "--precision", "fp16")
    assert r.exit_code == 2 and "fp16" in r.stderr
    assert r.stderr.startswith("Error: ") and r.stderr.strip().count("\n") == 0, r.stderr
    assert not (tmp_path / "e").exists()


def test_the_sampling_journal_keeps_no_token_ids(tiny_model, tmp_path):
    from chainforge.sampling import generate_journaled

    model, tokenizer = _tiny(tiny_model)
    journal = tmp_path / "j.jsonl"
    drawn = generate_journaled(journal, model, tokenizer, ["What is 1 + 1?"], n=2, max_new_tokens=4, seed=0)
    assert all(c.ids for c in drawn[0])
    records = [json.loads(x) for x in Path(journal).read_text().splitlines() if x.strip()]
    assert records and all("ids" not in c for r in records for c in r.get("completions", []))


@pytest.mark.parametrize("entropy", [False, True])
def test_shuffled_rows_share_their_prompts_and_keep_trls_values(tiny_model, entropy, monkeypatch):
    """TRL shuffles a step's rollouts before the loss: the rows of each prompt are put together (each
    prompt runs once) and the results come back in TRL's order, with TRL's values and gradients.
    Completions that all ended 3 tokens early: 3 columns fewer are computed, and come back as 0."""
    import copy
    import contextlib

    import torch
    from trl.trainer.utils import add_fused_lm_head

    from chainforge.stages import grpo

    calls = []
    real = grpo._shared_prompt_logits
    monkeypatch.setattr(grpo, "_shared_prompt_logits",
                        lambda m, ids, *a: calls.append((ids.size(1), real(m, ids, *a))) or calls[-1][1])
    ours, tokenizer = _tiny(tiny_model)
    theirs = copy.deepcopy(ours)
    add_fused_lm_head(theirs, temperature=0.7, outputs=("log_probs", "entropy"))
    ids, mask, keep = _batch(tokenizer, group=3)
    mask[:, -3:] = 0  # every completion ended 3 tokens early
    shuffled = torch.tensor([0, 3, 1, 4, 5, 2])  # no two neighbours share a prompt
    ids, mask = ids[shuffled], mask[shuffled]
    trainer = SimpleNamespace(accelerator=SimpleNamespace(autocast=contextlib.nullcontext), temperature=0.7)

    logps, entropies, _ = grpo.completion_logps(trainer, ours, ids, mask, keep, None, entropy)
    assert len(calls) == 1 and calls[0][1] is not None  # one call, the prompts shared
    assert calls[0][0] == ids.size(1) - 3  # the 3 padding columns were not computed
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :-keep] = -100
    out = theirs(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    valid = mask[:, -keep:].bool()
    assert logps.shape == (6, keep) and (logps[:, -3:] == 0).all()
    torch.testing.assert_close(logps[valid], out.log_probs[:, -keep:][valid], rtol=1e-4, atol=1e-4)
    if entropy:
        torch.testing.assert_close(entropies[valid], out.entropy[:, -keep:][valid], rtol=1e-4, atol=1e-4)
    (logps * valid).sum().backward()
    (out.log_probs[:, -keep:] * valid).sum().backward()
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_rows_with_one_prompt_are_grouped_wherever_they_sit():
    import torch

    from chainforge.stages.grpo import _prompt_groups

    prompts = torch.tensor([[3, 4], [1, 2], [3, 4], [1, 2], [5, 6]])
    mask = torch.ones_like(prompts)
    owner, heads = _prompt_groups(prompts, mask)
    assert prompts[heads].tolist() == [[1, 2], [3, 4], [5, 6]]  # each prompt once
    assert heads.tolist() == [1, 0, 4]  # its first row
    assert (prompts[heads][owner] == prompts).all()  # every row points at its own prompt
    assert _prompt_groups(prompts[[0, 1, 4]], mask[[0, 1, 4]]) is None  # nothing shared
    left_padded = mask.clone()
    left_padded[2, 0] = 0  # same ids, other padding: another prompt
    owner, heads = _prompt_groups(prompts, left_padded)
    assert len(heads) == 4 and owner[0] != owner[2] and owner[1] == owner[3]
