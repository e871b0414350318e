"""The vLLM backend (the optional extra `chainforge-r1[vllm]`): the same call as the HF loop."""

from __future__ import annotations

from typing import Any, Callable, Optional

from chainforge.sampling.core import Completion, row_seed, stop_token_ids
from chainforge.sampling.prompts import render_prompt

VLLM_INSTALL = "pip install 'chainforge-r1[vllm]'"


class VLLMModel:
    """A vLLM `LLM`, or any object with its `generate(prompts, sampling_params)` interface.

    `sampling_params` builds one request's parameters (vLLM's `SamplingParams` by default).
    Prompts go in as token ids (`{"prompt_token_ids": [...]}`) rendered with our chat template,
    so vLLM adds no second BOS and both backends see the same text."""

    def __init__(self, llm: Any, sampling_params: Optional[Callable[..., Any]] = None):
        self.llm = llm
        if sampling_params is None:
            sampling_params = _import_vllm().SamplingParams
        self.sampling_params = sampling_params


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _import_vllm():
    from chainforge.errors import UsageError

    try:
        import vllm
    except ImportError:
        raise UsageError(f"--backend vllm needs vLLM, which is not installed: run `{VLLM_INSTALL}` "
                         f"(Linux with a CUDA GPU), or use --backend hf") from None
    return vllm


def load_vllm(path: str, seed: int = 0, dtype: str = "auto", gpu_memory_utilization: float = 0.85,
              max_model_len: Optional[int] = None) -> VLLMModel:
    """A vLLM engine for a checkpoint folder or hub id (UsageError naming the extra if missing)."""
    vllm = _import_vllm()
    kwargs = {"model": path, "seed": seed, "dtype": dtype, "gpu_memory_utilization": gpu_memory_utilization}
    if max_model_len:
        kwargs["max_model_len"] = max_model_len
    kwargs.update(launcher_kwargs())
    return VLLMModel(vllm.LLM(**kwargs), vllm.SamplingParams)


def launcher_kwargs() -> dict:
    """Under torchrun/accelerate, one engine per rank on that rank's GPU, inside the launcher's
    process group (vLLM's `external_launcher`, as TRL's colocate mode runs it), instead of each
    engine trying to start its own workers on GPU 0."""
    from chainforge import distributed

    if distributed.world_size() <= 1:
        return {}
    distributed.init()
    return {"distributed_executor_backend": "external_launcher", "tensor_parallel_size": 1}


def _generate_vllm(model: VLLMModel, tokenizer, prompts, draws, temperature, top_p, max_new_tokens, seed,
                   keys, system_prompt, report) -> list[list[Completion]]:
    stops = stop_token_ids(tokenizer)
    requests = [{"prompt_token_ids": tokenizer(render_prompt(tokenizer, p, system_prompt),
                                               add_special_tokens=False)["input_ids"]} for p in prompts]
    # One parameter set per request, each with its own seed: a prompt's samples do not depend on
    # which other prompts share the engine's batch.
    params = [model.sampling_params(n=draws, temperature=max(temperature, 0.0),
                                    top_p=top_p if temperature > 0 else 1.0, max_tokens=max_new_tokens,
                                    seed=row_seed(seed, k, 0) % (2 ** 31), stop_token_ids=stops,
                                    skip_special_tokens=True)
              for k in keys]
    outputs = model.llm.generate(requests, params)
    if len(outputs) != len(prompts):
        raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
    results = []
    for out in outputs:
        comps = [Completion(text=o.text, tokens=len(o.token_ids), finished=o.finish_reason == "stop")
                 for o in list(out.outputs)[:draws]]
        if len(comps) != draws:
            raise RuntimeError(f"vLLM returned {len(comps)} completions for a prompt, expected {draws}")
        results.append(comps)
    report(len(prompts) * draws)
    return results
