"""Linear weights laid out once for oneDNN (chainforge.sampling.packed): the same numbers, bit for
bit, as the plain layers, and every layer as it was once the block exits."""

from __future__ import annotations

import contextlib

import pytest
import torch

from chainforge.sampling import generate
from chainforge.sampling import hf as hf_sampling
from chainforge.models import load_model, load_tokenizer, resolve_model
from chainforge.sampling.packed import PACKED_ENV, onednn_bf16, packed_linears, packing_applies

needs_onednn_bf16 = pytest.mark.skipif(not onednn_bf16(), reason="this PyTorch build has no oneDNN bf16")


def _load(path, dtype):
    ref = resolve_model(str(path))
    return load_model(ref, dtype=dtype).eval(), load_tokenizer(ref)


def _logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits.float()


def _ids(rows=3, length=11):
    return torch.randint(3, 200, (rows, length), generator=torch.Generator().manual_seed(0))


@needs_onednn_bf16
def test_bf16_model_gives_the_same_logits_bit_for_bit(tiny_model):
    model, _ = _load(tiny_model, torch.bfloat16)
    ids = _ids()
    plain = _logits(model, ids)
    with packed_linears(model) as layers:
        packed = _logits(model, ids)
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    assert layers == linears > 0
    assert torch.equal(packed, plain)


@needs_onednn_bf16
def test_fp32_weights_under_autocast_give_the_autocast_logits_bit_for_bit(tiny_model):
    model, _ = _load(tiny_model, torch.float32)
    ids = _ids(rows=5, length=7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = _logits(model, ids)
        with packed_linears(model) as layers:
            packed = _logits(model, ids)
    assert layers > 0
    assert torch.equal(packed, plain)


def test_fp32_without_autocast_is_left_alone(tiny_model):
    model, _ = _load(tiny_model, torch.float32)
    assert not packing_applies(model)
    with packed_linears(model) as layers:
        assert layers == 0
        assert not any("forward" in m.__dict__ for m in model.modules())


@needs_onednn_bf16
def test_every_layer_is_restored_and_gradients_still_flow_inside(tiny_model):
    model, _ = _load(tiny_model, torch.float32)
    ids = _ids(rows=2, length=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with packed_linears(model) as layers:
            assert layers > 0
            assert all("forward" in m.__dict__ for m in model.modules() if type(m) is torch.nn.Linear)
            loss = model(input_ids=ids).logits.float().mean()  # grad enabled: the plain layers run
            loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.dim() == 2)
    assert not any("forward" in m.__dict__ for m in model.modules())


@needs_onednn_bf16
def test_switched_off_by_the_environment(tiny_model, monkeypatch):
    model, _ = _load(tiny_model, torch.bfloat16)
    assert packing_applies(model)
    monkeypatch.setenv(PACKED_ENV, "0")
    assert not packing_applies(model)


@needs_onednn_bf16
def test_the_engine_samples_the_same_completions_packed_or_not(tiny_model, monkeypatch):
    model, tok = _load(tiny_model, torch.bfloat16)
    used = []
    real = hf_sampling.packed_linears

    @contextlib.contextmanager
    def spy(m):
        with real(m) as layers:
            used.append(layers)
            yield layers

    monkeypatch.setattr(hf_sampling, "packed_linears", spy)
    prompts = ["What is 2 + 3?", "What is 7 - 4?", "Name a colour."]
    packed = generate(model, tok, prompts, n=3, temperature=1.0, max_new_tokens=12, seed=5, batch_size=4)
    monkeypatch.setenv(PACKED_ENV, "0")
    plain = generate(model, tok, prompts, n=3, temperature=1.0, max_new_tokens=12, seed=5, batch_size=4)
    assert used[0] > 0 and used[1] == 0
    assert [[c.ids for c in comps] for comps in packed] == [[c.ids for c in comps] for comps in plain]
