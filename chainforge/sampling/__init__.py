"""Sampling: model + prompts → n completions per prompt, for collect's local teacher, the format
check after training, reject, eval and distill. One job per module:

- `engine`: `generate(model, tokenizer, prompts, n=8, temperature=0.7, max_new_tokens=256, seed=0)`,
  the entry point (determinism and speed are described there);
- `hf`: the decode loop for Hugging Face models; `vllm_backend`: the same call on vLLM;
- `memory`: batch size from free memory; `core`: Completion, stop tokens, per-row seeds, progress;
- `prompts`: chat messages, the system turn, rendering, prompt/row ids;
- `loading`: the engine a command's options ask for (`engine_spec`, `load_engine`);
- `journaled`: `generate_journaled`, resumable sampling.
"""

from chainforge.sampling.core import Completion, row_seed, stop_token_ids
from chainforge.sampling.engine import BatchSize, generate
from chainforge.sampling.journaled import generate_journaled
from chainforge.sampling.loading import BACKENDS, EngineSpec, engine_spec, load_engine
from chainforge.sampling.memory import auto_batch_size, bytes_per_row
from chainforge.sampling.prompts import Prompt, as_messages, prompt_id, render_prompt, resolve_system_prompt, row_id
from chainforge.sampling.vllm_backend import VLLM_INSTALL, VLLMModel, load_vllm, vllm_available

__all__ = ["BACKENDS", "BatchSize", "Completion", "EngineSpec", "Prompt", "VLLMModel", "VLLM_INSTALL", "as_messages",
           "auto_batch_size", "bytes_per_row", "engine_spec", "generate", "generate_journaled", "load_engine",
           "load_vllm", "prompt_id", "render_prompt", "resolve_system_prompt", "row_id", "row_seed",
           "stop_token_ids", "vllm_available"]
