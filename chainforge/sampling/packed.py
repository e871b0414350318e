"""CPU decoding with every linear layer's bf16 weight laid out once for oneDNN.

`F.linear` on a bf16 CPU tensor hands oneDNN a plain row-major weight, which it re-lays out into
its blocked format on every call; over a decode that is one extra pass over all the weights per
generated token. `packed_linears(model)` lays each `nn.Linear` weight out once, on entry
(`torch.ops.mkldnn._reorder_linear_weight`, the op PyTorch's own CPU compiler uses when it freezes
weights), and the layers use that copy until the block exits. Measured on the dev machine
(2 cores, AVX512-BF16, 2026-12-06, one layer timed alone): a 1536 × 576 layer at 1 / 16 / 64 /
128 rows 1.8× / 1.4× / 1.2× / 1.06× faster, the 49,152-row LM head 2.1× at 1 and at 16 rows;
laying out all 211 of SmolLM2's layers took 70 ms in a profiled eval.

The results are the same numbers: measured, the outputs equal `F.linear`'s bit for bit (bf16
weights, or fp32 weights under bf16 autocast: the weight is cast to bf16 as autocast casts it).
tests/test_packed.py checks a whole model's logits and the engine's samples.

It applies only where that holds: a CPU model whose linear layers compute in bf16 (bf16 weights,
or fp32 weights under CPU bf16 autocast), with no gradient wanted, on a PyTorch build with
oneDNN bf16. Anything else (CUDA, fp32 without autocast, quantised layers, which are not plain
`nn.Linear`) runs as before; a LoRA layer's own inner `nn.Linear` layers are laid out like any
other. `CHAINFORGE_PACKED_LINEAR=0` turns it off.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

PACKED_ENV = "CHAINFORGE_PACKED_LINEAR"


def onednn_bf16() -> bool:
    """Whether this PyTorch build has the oneDNN ops `packed_linears` uses, with bf16."""
    import torch

    ops = getattr(torch.ops, "mkldnn", None)
    try:
        return bool(torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_linear_weight")
                    and hasattr(ops, "_linear_pointwise") and ops._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _bf16_autocast() -> bool:
    import torch

    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def packing_applies(model) -> bool:
    """Whether `packed_linears` would lay out `model`'s weights (see the module's docstring)."""
    import torch

    if os.environ.get(PACKED_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        param = next(model.parameters())
    except (StopIteration, AttributeError, TypeError):
        return False
    if param.device.type != "cpu" or not onednn_bf16():
        return False
    return param.dtype == torch.bfloat16 or (param.dtype == torch.float32 and _bf16_autocast())


@contextlib.contextmanager
def packed_linears(model) -> Iterator[int]:
    """Inside the block, `model`'s plain `nn.Linear` layers compute with weights laid out once; the
    value is how many layers that is (0 when it does not apply). Weights must not change inside
    the block (the layout is a copy); on exit every layer is as it was."""
    import torch

    if not packing_applies(model):
        yield 0
        return
    patched = []
    try:
        for module in model.modules():
            if type(module) is not torch.nn.Linear or module.weight.device.type != "cpu":
                continue
            if module.weight.dtype not in (torch.bfloat16, torch.float32):
                continue
            packed = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach().to(torch.bfloat16))
            bias = None if module.bias is None else module.bias.detach().to(torch.bfloat16)
            had = "forward" in module.__dict__
            patched.append((module, had, module.__dict__.get("forward")))
            module.forward = _packed_forward(module, packed, bias, module.forward)
        yield len(patched)
    finally:
        for module, had, old in reversed(patched):
            if had:
                module.forward = old
            else:
                del module.forward


def _packed_forward(module, packed, bias, original):
    import torch

    weight_bf16 = module.weight.dtype == torch.bfloat16

    def forward(x):
        if torch.is_grad_enabled() and (x.requires_grad or module.weight.requires_grad):
            return original(x)  # the packed op has no backward
        # a bf16 product under bf16 autocast, or with bf16 weights and input; else the plain layer's maths
        if not (_bf16_autocast() or (weight_bf16 and x.dtype == torch.bfloat16)):
            return original(x)
        shape = x.shape
        y = torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16).reshape(-1, shape[-1]), packed, bias,
                                               "none", [], "")
        return y.reshape(*shape[:-1], y.shape[-1])

    return forward
