"""distill's `--student pruned:N`: the teacher with the layers whose removal costs least removed (a
probe of the teacher's own completions; without one, the block before the last layer) — fewer
parameters, the teacher's own layers, loads, generates, built once per teacher and probe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chainforge.errors import UsageError
from helpers.files import manifest, write_jsonl


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    from helpers.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "teacher4", layers=4, seed=3)


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_pruned_student_is_the_teacher_without_a_block_of_deep_layers(teacher):
    import torch

    from chainforge.models import load_model, load_tokenizer, pruned_layers, resolve_model, resolve_student
    from chainforge.sampling import generate

    ref = resolve_student("pruned:2", resolve_model(str(teacher)))
    student, big = load_model(ref), load_model(resolve_model(str(teacher)))
    assert pruned_layers(4, 2) == [0, 3]
    assert student.config.num_hidden_layers == 2 and len(student.model.layers) == 2
    per_layer = _params(big.model.layers[0])
    assert _params(student) == _params(big) - 2 * per_layer
    # layer 0 and the last layer are the teacher's own; the embeddings and head too
    for mine, theirs in ((0, 0), (1, 3)):
        for (name, a), (_, b) in zip(student.model.layers[mine].named_parameters(),
                                     big.model.layers[theirs].named_parameters()):
            assert torch.equal(a, b), name
    assert torch.equal(student.model.embed_tokens.weight, big.model.embed_tokens.weight)
    outs = generate(student, load_tokenizer(ref), ["What is 1 + 2?"], n=2, temperature=1.0, max_new_tokens=6)
    assert len(outs[0]) == 2 and all(c.tokens > 0 for c in outs[0])


def test_pruned_copy_is_built_once_per_teacher(tmp_path):
    import os

    from chainforge.models import resolve_model, resolve_student
    from helpers.tiny import build_tiny_model

    folder = build_tiny_model(tmp_path / "teacher", layers=4, seed=3)
    first = resolve_student("pruned:3", resolve_model(str(folder))).path
    stamp = (Path(first) / "model.safetensors").stat().st_mtime_ns
    assert resolve_student("pruned:3", resolve_model(str(folder))).path == first
    assert (Path(first) / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    # the teacher retrained in place (new weights, same folder): a new copy
    build_tiny_model(folder, layers=4, seed=9)
    weights = folder / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1))
    assert resolve_student("pruned:3", resolve_model(str(folder))).path != first


@pytest.mark.parametrize("spec", ["pruned:4", "pruned:0"])
def test_pruned_needs_fewer_layers_than_the_teacher(teacher, spec):
    from chainforge.models import resolve_model, resolve_student

    with pytest.raises(UsageError, match="the teacher has 4 decoder layers; keep between 1 and 3"):
        resolve_student(spec, resolve_model(str(teacher)))


def test_distill_into_the_pruned_teacher(cli, teacher, tmp_path):
    rows = [{"prompt": f"What is {a} + {a}?", "answer": None} for a in range(8)]
    data = write_jsonl(tmp_path / "p.jsonl", rows)
    out = tmp_path / "distill"
    r = cli("distill", "--teacher", teacher, "--student", "pruned:2", "--data", data, "--output", out,
            "--num-samples", "1", "--temperature", "1.0", "--max-steps", "2", "--max-new-tokens", "8",
            "--batch-size", "2", "--eval-fraction", "0")
    assert r.exit_code == 0, r.stderr
    saved = json.loads((out / "config.json").read_text())
    assert saved["num_hidden_layers"] == 2
    m = manifest(out)
    assert m["status"] == "complete" and m["config"]["student"] == "pruned:2"
    from chainforge.models import load_model, resolve_model

    teacher_params = sum(p.numel() for p in load_model(resolve_model(str(teacher))).parameters())
    assert m["metrics"]["teacher_parameters"] == teacher_params
    assert m["metrics"]["student_parameters"] < teacher_params
    # the copy trained is named (run evaluates it as the student's start) and was chosen with the probe
    record = json.loads((Path(m["metrics"]["student_start"]) / "pruned.json").read_text())
    assert record["probe_prompts"] == 8 and len(record["kept"]) == 2


def _with_a_no_op_layer(folder: Path, layer: int) -> None:
    """Zero `layer`'s attention and MLP output projections: the residual stream passes it unchanged,
    so removing it costs nothing. The other layers' outputs are scaled up so that each one shapes the
    model's (otherwise near-uniform, random) predictions: removing one of them costs."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    with torch.no_grad():
        for i, block in enumerate(model.model.layers):
            for weight in (block.self_attn.o_proj.weight, block.mlp.down_proj.weight):
                weight.mul_(0.0 if i == layer else 30.0)
    model.save_pretrained(str(folder), safe_serialization=True)


@pytest.mark.parametrize("no_op", [1, 2])
def test_the_probe_removes_the_layer_that_costs_nothing(tmp_path, no_op):
    from chainforge.models import load_model, resolve_model, resolve_student
    from helpers.tiny import build_tiny_model

    folder = build_tiny_model(tmp_path / "teacher", layers=4, seed=3)
    _with_a_no_op_layer(folder, no_op)
    prompts = [f"What is {a} + {a + 1}?" for a in range(10)]
    ref = resolve_student("pruned:3", resolve_model(str(folder)), probe=prompts)
    record = json.loads((Path(ref.path) / "pruned.json").read_text())
    assert record["kept"] == [i for i in range(4) if i != no_op] and record["removed_in_order"] == [no_op]
    assert record["probe_prompts"] == 8  # the first 8
    assert record["probe_loss_without_each"][no_op] == pytest.approx(record["probe_loss_full"], abs=1e-4)
    others = [c for i, c in enumerate(record["probe_loss_without_each"]) if i != no_op]
    assert min(others) > record["probe_loss_full"] + 1e-3  # every real layer costs something
    # the copy is that selection: the same logits as the teacher, which never used the no-op layer
    import torch

    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        assert torch.allclose(load_model(ref)(ids).logits, load_model(resolve_model(str(folder)))(ids).logits,
                              atol=1e-5)
    # without a probe the copy is another one: the block before the last layer
    plain = resolve_student("pruned:3", resolve_model(str(folder)))
    assert plain.path != ref.path
    assert json.loads((Path(plain.path) / "pruned.json").read_text())["kept"] == [0, 1, 3]


def test_pruning_a_hub_teacher_is_exit_2_before_anything_is_written(cli, tmp_path):
    from helpers.cli import assert_exit_2

    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "What is 1 + 1?"}])
    out = tmp_path / "distill"
    r = cli("distill", "--teacher", "Qwen/Qwen2.5-7B", "--student", "pruned:20", "--data", data, "--output", out,
            "--eval-fraction", "0")
    assert_exit_2(r, "prunes the teacher, which must be on disk", output=out)
