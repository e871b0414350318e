"""The engine behind a sampling command's options: checked before the output exists, loaded after."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chainforge.compat import check_tested_versions
from chainforge.sampling.engine import BatchSize
from chainforge.sampling.vllm_backend import _import_vllm, load_vllm

BACKENDS = ("hf", "vllm")


@dataclass
class EngineSpec:
    """What `load_engine` loads: validated before a stage creates its output."""

    ref: Any  # chainforge.models.ModelRef
    backend: str
    batch_size: BatchSize
    seed: int
    precision: str = "auto"  # see chainforge.models.use_bf16


def engine_spec(config, model_option: str = "model") -> EngineSpec:
    """The engine a sampling config (`EngineOptions`: bounds already checked) asks for; names the
    vLLM extra when it is missing and checks the model spec. No weights are read."""
    check_tested_versions(["transformers"])  # the HF engine reads DynamicCache internals
    from chainforge.models import resolve_model

    batch_size: BatchSize = "auto" if config.batch_size in (None, "", "auto") else int(config.batch_size)
    if config.backend == "vllm":
        _import_vllm()  # names the extra when vLLM is missing
    ref = resolve_model(getattr(config, model_option), what="--" + model_option.replace("_", "-"))
    return EngineSpec(ref, config.backend, batch_size, config.seed, getattr(config, "precision", "auto"))


def load_engine(spec: EngineSpec):
    """(model, tokenizer) for `generate`: a Hugging Face model on the best device, or vLLM."""
    from chainforge.models import checkpoint_path, default_device, load_model, load_tokenizer, sampling_dtype

    tokenizer = load_tokenizer(spec.ref)
    if spec.backend == "vllm":
        return load_vllm(checkpoint_path(spec.ref), seed=spec.seed), tokenizer
    device = default_device()
    return load_model(spec.ref, dtype=sampling_dtype(spec.precision, device), device=device), tokenizer
