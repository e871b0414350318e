"""chainforge sft on the tiny model: real SFTTrainer runs, real files.

One trained output (module fixture) backs the output/metrics checks and is the uninterrupted run the
resume test compares against.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers.cli import assert_exit_2
from helpers.files import manifest, write_jsonl
from helpers.launch import torchrun
from helpers.rows import collect_rows, super_cot

FAST = ["--max-steps", "4", "--save-steps", "2", "--batch-size", "4", "--max-new-tokens", "8"]

SMOLLM2_TEMPLATE = (  # SmolLM2-135M-Instruct's own template (from its GGUF): no markers, a default system prompt
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def reject_rows(n: int = 8) -> list[dict]:
    """Rows shaped like a reject output: id, prompt, reference, text, messages, reward, candidates, kept_rank."""
    return [{"id": r["id"], "prompt": r["prompt"], "reference": r["reference"], "text": r["text"],
             "messages": r["messages"], "reward": 1.3, "candidates": 4, "kept_rank": 0}
            for r in collect_rows(n)]


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """One `chainforge sft` run on a collect-shaped dataset (4 steps, checkpoints every 2)."""
    from helpers.cli import CLI

    tmp = tmp_path_factory.mktemp("sft")
    data = write_jsonl(tmp / "collect.jsonl", collect_rows())
    out = tmp / "out"
    result = CLI()("sft", "--model", tiny_model, "--data", data, "--output", out, *FAST)
    return {"result": result, "out": out, "data": data}


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


# ---- the trained output ---------------------------------------------------------------------------

def test_sft_writes_a_loadable_checkpoint_and_contract_metrics(trained, tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.chat_template_utils import has_generation_markers

    res, out = trained["result"], trained["out"]
    assert res.exit_code == 0, res.stderr
    m = manifest(out)
    assert m["status"] == "complete" and m["stage"] == "sft"
    metrics = m["metrics"]
    assert metrics["steps"] == 4 and metrics["world_size"] == 1
    assert metrics["rows"] == 11  # --only-correct (the default) skipped the one correct=false row
    assert "skipped 1 of 12 rows" in res.stderr
    assert metrics["train_loss"] > 0 and metrics["tokens"] > 0 and metrics["tokens_per_s"] > 0
    assert 0.0 <= metrics["format_rate"] <= 1.0 and metrics["format_prompts"] == 4
    assert metrics["format_held_out"] is False  # 11 rows: too few to hold any out (documented)
    # the result loads, the weights moved, the training template travels with it
    model = AutoModelForCausalLM.from_pretrained(str(out))
    before, after = weights(tiny_model), weights(out)
    assert any(not before[k].equal(after[k]) for k in before)
    tok = AutoTokenizer.from_pretrained(str(out))
    assert has_generation_markers(tok.chat_template)
    assert model.config.vocab_size == len(tok)
    # TensorBoard event files under --output; resumable checkpoints removed once complete
    assert list((out / "runs").glob("events.out.tfevents.*"))
    assert not list(out.glob("checkpoint-*"))
    assert not list(out.glob(".partial-*"))


def test_resume_continues_from_the_checkpoint_with_the_optimizer_state(trained, tiny_model, tmp_path, cli,
                                                                        monkeypatch):
    """Ctrl-C after checkpoint-2 → exit 130; the same command resumes and ends at step 4 with the same
    weights as the uninterrupted run. Without optimizer.pt the weights differ: the comparison is
    sensitive to the optimizer state."""
    import transformers.trainer as hf_trainer
    from transformers import TrainerCallback

    class CtrlCAtStep3(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise KeyboardInterrupt

    data, uninterrupted = trained["data"], weights(trained["out"])
    results = {}
    for name, drop_optimizer in (("resumed", False), ("fresh-optimizer", True)):
        out = tmp_path / name
        with monkeypatch.context() as mp:
            mp.setattr(hf_trainer, "DEFAULT_CALLBACKS", hf_trainer.DEFAULT_CALLBACKS + [CtrlCAtStep3])
            first = cli("sft", "--model", tiny_model, "--data", data, "--output", out, *FAST)
        assert first.exit_code == 130, first.stderr
        assert manifest(out)["status"] == "incomplete"
        assert (out / "checkpoint-2" / "optimizer.pt").is_file() and not (out / "checkpoint-4").exists()
        if drop_optimizer:
            (out / "checkpoint-2" / "optimizer.pt").unlink()
        second = cli("sft", "--model", tiny_model, "--data", data, "--output", out, *FAST)
        assert second.exit_code == 0, second.stderr
        assert "resuming from checkpoint-2" in second.stderr
        assert manifest(out)["metrics"]["steps"] == 4 and manifest(out)["status"] == "complete"
        results[name] = weights(out)
    for key, value in uninterrupted.items():
        assert results["resumed"][key].allclose(value, atol=1e-6), key
    assert any(not results["fresh-optimizer"][k].allclose(v, atol=1e-6) for k, v in uninterrupted.items())


def test_reject_output_trains_unchanged_with_lora(tiny_model, tmp_path, cli):
    """A reject output (saved with save_to_disk, its columns as the contract lists) is taken as it is;
    --lora trains adapters and merges them into a plain checkpoint."""
    import datasets
    from transformers import AutoModelForCausalLM

    data = tmp_path / "reject"
    datasets.Dataset.from_list(reject_rows()).save_to_disk(str(data))
    out = tmp_path / "out"
    res = cli("sft", "--model", tiny_model, "--data", data, "--output", out, "--lora", "--lora-r", "4",
              "--lora-targets", "q_proj,v_proj", "--learning-rate", "1e-2", "--max-steps", "2",
              "--batch-size", "4", "--max-new-tokens", "4")
    assert res.exit_code == 0, res.stderr
    assert manifest(out)["metrics"]["rows"] == 8  # no `correct` column: every row counts
    assert not (out / "adapter_config.json").exists()  # merged
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert not any("lora" in name for name, _ in model.named_parameters())
    before, after = weights(tiny_model), weights(out)
    changed = {k for k in before if not before[k].equal(after[k])}
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed)


# ---- the label mask and the template -----------------------------------------------------------

def _trainer(tiny_model, tmp_path, rows, **opts):
    from chainforge.models import ModelRef, load_model, load_tokenizer, training_template
    from chainforge.stages.sft import SftConfig
    from chainforge.traces import sft_dataset
    from chainforge.training import sft_args, sft_trainer_class

    import datasets

    ref = ModelRef(str(tiny_model), "folder", str(tiny_model))
    tok = load_tokenizer(ref)
    if opts.pop("smollm2_template", False):
        tok.chat_template = SMOLLM2_TEMPLATE
    ds = sft_dataset(datasets.Dataset.from_list(rows))
    training_template(tok, ds[0]["messages"])
    opts.setdefault("packing", False)  # padded batches unless a test asks for packing
    config = SftConfig(model=str(tiny_model), data="d", output=str(tmp_path / "o"), batch_size=len(rows),
                       max_length=512, seed=0, **opts)
    args = sft_args(config, tmp_path / "o", report_to=[])
    return sft_trainer_class()(model=load_model(ref), args=args, train_dataset=ds, processing_class=tok), tok, ds


@pytest.mark.parametrize("template", ["chatml", "smollm2"])
def test_label_mask_counts_every_assistant_token_and_nothing_else(tiny_model, tmp_path, template):
    """On a real collated (padded) batch: prompt tokens, the turn's trailing newline and pads are -100;
    the assistant content and its <|im_end|> are labels, byte for byte. With SmolLM2's template (no
    markers, a default system prompt) ChatML is installed and no system prompt is injected."""
    rows = [r for r in collect_rows(7) if r["correct"]]
    trainer, tok, ds = _trainer(tiny_model, tmp_path, rows, smollm2_template=(template == "smollm2"))
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == len(rows)
    assert (batch["attention_mask"] == 0).any(), "rows of different lengths: the batch must hold padding"
    seen = set()
    for ids, mask, labels in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(),
                                 batch["labels"].tolist()):
        assert all(lab == -100 for lab, m in zip(labels, mask) if m == 0)  # every pad ignored
        real = [t for t, m in zip(ids, mask) if m == 1]
        text = tok.decode(real)
        assert "SmolLM" not in text and "system" not in text
        row = next(r for r in rows if tok.apply_chat_template(r["messages"], tokenize=False) == text)
        prompt = tok.apply_chat_template(row["messages"][:1], tokenize=True, add_generation_prompt=True,
                                         return_dict=True)["input_ids"]
        assert real[:len(prompt)] == prompt
        real_labels = [lab for lab, m in zip(labels, mask) if m == 1]
        assert all(lab == -100 for lab in real_labels[:len(prompt)])  # every prompt token ignored
        counted = [lab for lab in real_labels if lab != -100]
        # every assistant token counted, contiguously, ending with the turn's end token
        first = next(k for k, lab in enumerate(real_labels) if lab != -100)
        assert first == len(prompt) and counted == real[first:first + len(counted)]
        assert tok.decode(counted) == row["messages"][1]["content"] + "<|im_end|>"
        seen.add(row["id"])
    assert len(seen) == len(rows)


def test_super_cot_text_survives_the_template_byte_for_byte(tiny_model):
    from chainforge.formats import RESERVED_TAGS
    from chainforge.models import ModelRef, load_tokenizer
    from chainforge.models import training_template

    tok = load_tokenizer(ModelRef(str(tiny_model), "folder", str(tiny_model)))
    row = collect_rows(3)[2]  # three steps, one with an <explanation>
    training_template(tok, row["messages"])
    rendered = tok.apply_chat_template(row["messages"], tokenize=False)
    assert row["text"] in rendered
    assert all(rendered.count(tag) == row["text"].count(tag) >= 1 for tag in RESERVED_TAGS)
    # and through the tokenizer: the assistant-masked tokens decode to the text exactly
    enc = tok.apply_chat_template(row["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    answer = [t for t, keep in zip(enc["input_ids"], enc["assistant_masks"]) if keep]
    assert tok.decode(answer) == row["text"] + "<|im_end|>"


def test_a_template_that_strips_think_blocks_is_replaced(tiny_model):
    """A reasoning-model template that drops <think>…</think> from the answer fails the probe."""
    from chainforge.models import CHATML_TEMPLATE, ModelRef, load_tokenizer
    from chainforge.models import training_template

    tok = load_tokenizer(ModelRef(str(tiny_model), "folder", str(tiny_model)))
    tok.chat_template = CHATML_TEMPLATE.replace(
        "message['content'] + '<|im_end|>'", "(message['content'].split('</think>')[-1]) + '<|im_end|>'")
    row = collect_rows(1)[0]
    assert "installed" in training_template(tok, row["messages"])
    assert tok.chat_template == CHATML_TEMPLATE


def test_packed_and_padded_losses_agree(tiny_model, tmp_path):
    """--packing (TRL bfd, padding-free) computes the same loss as padded batches on CPU: the packed
    row's position_ids make transformers build a block-diagonal mask (TRL passes use_cache=False)."""
    import torch

    rows = [r for r in collect_rows(7) if r["correct"]]
    padded, _, _ = _trainer(tiny_model, tmp_path / "a", rows)
    packed, _, _ = _trainer(tiny_model, tmp_path / "b", rows, packing=True)
    losses = {}
    for name, trainer in (("padded", padded), ("packed", packed)):
        batches = list(trainer.get_train_dataloader())
        total, count = 0.0, 0
        for batch in batches:
            n = int((batch["labels"][:, 1:] != -100).sum())
            with torch.no_grad():
                total += float(trainer.compute_loss(trainer.model, dict(batch))) * n
            count += n
        losses[name] = (total / count, count)
        if name == "packed":
            assert batches[0]["input_ids"].shape[0] == 1 and "attention_mask" not in batches[0]
    assert losses["padded"][1] == losses["packed"][1]
    assert losses["padded"][0] == pytest.approx(losses["packed"][0], rel=1e-5)


@pytest.mark.parametrize("packing", [True, False])
def test_the_cpu_step_equals_trls_loss_gradients_and_metrics(tiny_model, tmp_path, packing):
    """On CPU the step projects only the labelled positions through the LM head and, packed, runs
    attention row by row (training.labelled_positions_loss, training.packed_attention): the loss,
    every gradient and the logged entropy / token accuracy are TRL's own path's (its fused LM head
    over every position, the block-diagonal mask transformers derives from the position ids)."""
    import torch
    from trl import SFTTrainer

    from chainforge import training

    rows = [r for r in collect_rows(7) if r["correct"]]
    trainer, _, _ = _trainer(tiny_model, tmp_path, rows, packing=packing)
    assert training.labelled_positions_loss_applies(trainer)
    batch = next(iter(trainer.get_train_dataloader()))
    assert ("cu_seq_lens_q" in batch) == packing
    trainer.model.train()
    results = {}
    for name in ("trl", "ours"):
        trainer.model.zero_grad(set_to_none=True)
        trainer._metrics["train"].clear()
        if name == "trl":
            loss = SFTTrainer.compute_loss(trainer, trainer.model, dict(batch))
        else:
            with training.packed_attention(trainer.model, trainer.args):
                assert trainer.model.config._attn_implementation == (training.PACKED_ATTENTION if packing else "sdpa")
                loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        metrics = {k: trainer._metrics["train"][k][-1] for k in ("entropy", "mean_token_accuracy")}
        results[name] = (float(loss.detach()), grads, metrics)
    assert trainer.model.config._attn_implementation == "sdpa"  # restored: it is what gets saved
    (a, ga, ma), (b, gb, mb) = results["trl"], results["ours"]
    assert b == pytest.approx(a, rel=1e-5)
    assert ga.keys() == gb.keys() and len(ga) > 0
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], rtol=1e-4, atol=1e-6, msg=n)
    assert mb["entropy"] == pytest.approx(ma["entropy"], rel=1e-4)
    assert mb["mean_token_accuracy"] == pytest.approx(ma["mean_token_accuracy"])


def test_packed_attention_is_the_block_diagonal_mask(tiny_model):
    """Row-by-row SDPA over cu_seq_lens equals transformers' SDPA with the mask it derives from the
    packed position ids, outputs and gradients."""
    import torch

    from chainforge import training
    from chainforge.models import ModelRef, load_model

    model = load_model(ModelRef(str(tiny_model), "folder", str(tiny_model)))
    lengths = [5, 9, 1, 7]
    ids = torch.randint(5, 300, (1, sum(lengths)))
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    cuts = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    kw = dict(input_ids=ids, position_ids=positions, use_cache=False, cu_seq_lens_q=cuts, cu_seq_lens_k=cuts,
              max_length_q=max(lengths), max_length_k=max(lengths))
    out = {}
    for name in ("sdpa", "packed"):
        model.zero_grad(set_to_none=True)
        if name == "packed":
            with training.packed_attention(model, SimpleNamespace(packing=True)):
                logits = model(**kw).logits
        else:
            logits = model(**kw).logits
        logits.square().mean().backward()
        out[name] = (logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(out["packed"][0], out["sdpa"][0], rtol=1e-5, atol=1e-5)
    for n, g in out["sdpa"][1].items():
        torch.testing.assert_close(out["packed"][1][n], g, rtol=1e-4, atol=1e-6, msg=n)


# ---- bad input: exit 2, one line, nothing at --output ------------------------------------------

BAD = {
    "no-columns": ([{"question": "q", "answer": "a"}], [], "'messages' column"),
    "no-assistant": ([{"messages": [{"role": "user", "content": "hi"}]}], [], "no assistant turn"),
    "all-incorrect": ([dict(r, correct=False) for r in collect_rows(2)], [], "--all-rows"),
    "prompt-too-long": ([{"prompt": "What is 1 + 1? " * 40, "completion": "2"}], ["--max-length", "32"],
                        "raise --max-length"),
    "lora-targets": (collect_rows(2), ["--lora", "--lora-targets", "nonexistent_proj"], "q_proj"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_exit_2_and_creates_nothing(case, tiny_model, tmp_path, cli):
    rows, extra, expected = BAD[case]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    out = tmp_path / "out"
    res = cli("sft", "--model", tiny_model, "--data", data, "--output", out, *extra)
    assert_exit_2(res, expected, output=out, alone=False)


def test_all_rows_keeps_rows_marked_incorrect(tiny_model, tmp_path):
    import datasets

    from chainforge.traces import sft_dataset

    rows = datasets.Dataset.from_list(collect_rows(4))
    assert len(sft_dataset(rows, only_correct=True)) == 3
    assert len(sft_dataset(rows, only_correct=False)) == 4
    pc = datasets.Dataset.from_list([{"prompt": "What is 1 + 1?", "completion": super_cot(1)}])
    assert sft_dataset(pc)[0]["messages"][1] == {"role": "assistant", "content": super_cot(1)}


def test_config_files_are_valid_sft_options(tmp_path, cli):
    """configs/sft-*.yaml hold only sft option names (an unknown key would be exit 2 before the data check)."""
    root = Path(__file__).resolve().parent.parent
    for name in ("sft-cpu-small.yaml", "sft-qwen2.5-7b.yaml"):
        res = cli("sft", "--config", root / "configs" / name, "--model", "x/y", "--data", tmp_path / "none.jsonl",
                  "--output", tmp_path / "o")
        assert res.exit_code == 2 and "--data not found" in res.stderr, res.stderr


# ---- several processes -----------------------------------------------------------------------------

@pytest.mark.slow
def test_torchrun_two_processes_write_one_checkpoint(tiny_model, tmp_path):
    """`torchrun --nproc_per_node 2 -m chainforge sft` on CPU (gloo): world size 2, one checkpoint."""
    data = write_jsonl(tmp_path / "collect.jsonl", collect_rows())
    out = tmp_path / "out"
    proc = torchrun(["sft", "--model", tiny_model, "--data", data, "--output", out, *FAST], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = manifest(out)
    assert m["status"] == "complete" and m["metrics"]["world_size"] == 2 and m["metrics"]["steps"] == 4
    assert len(list(out.glob("*.safetensors"))) == 1
    assert not list(out.glob(".partial-*")) and not list(out.glob("checkpoint-*"))


def test_rows_get_the_super_cot_system_turn_that_later_stages_sample_under():
    import datasets

    from chainforge.formats import SUPER_COT_SYSTEM_PROMPT
    from chainforge.sampling import resolve_system_prompt
    from chainforge.traces import sft_dataset

    rows = datasets.Dataset.from_list([
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "system", "content": "own"}, {"role": "user", "content": "q"},
                      {"role": "assistant", "content": "a"}]},
    ])
    out = sft_dataset(rows, system_prompt=resolve_system_prompt(None))
    assert out[0]["messages"][0] == {"role": "system", "content": SUPER_COT_SYSTEM_PROMPT}
    assert [m["role"] for m in out[0]["messages"]] == ["system", "user", "assistant"]
    assert out[1]["messages"][0]["content"] == "own"  # a row's own system turn is kept
    assert [m["role"] for m in sft_dataset(rows, system_prompt=resolve_system_prompt(""))[0]["messages"]] == \
        ["user", "assistant"]
