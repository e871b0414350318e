"""The one generation engine: model + prompts → n completions per prompt.

Used by collect's local teacher, the structure check after sft, reject, eval and distill.

    generate(model, tokenizer, prompts, n=8, temperature=0.7, max_new_tokens=256, seed=0)

How it is fast (on a Hugging Face model; the loop is ours, not `model.generate`):
- Length-sorted batching: (prompt, sample) rows are sorted by prompt length, so a batch holds
  prompts of similar length (little padding; short prompts don't wait on long ones).
- n candidates per prompt in one pass: a batch prefills each distinct prompt once and copies its
  KV cache to its n rows (`model.generate(num_return_sequences=n)` prefills every copy).
- Finished rows leave the batch: once a quarter of the rows have stopped, the cache is compacted,
  so the batch does not keep paying for completions that ended early.
- Batch size fits memory: `batch_size="auto"` sizes the batch from the KV-cache bytes per row and
  the free memory (GPU) or available RAM (CPU).

Determinism: every (prompt, sample) row draws from its own generator, seeded from (seed, the
prompt's key, the sample's index), so the completions do not depend on the batch size, the batch
a row landed in, or how a long run was split into chunks (up to float round-off in padded
batches). A prompt's key is its position in `prompts` unless `keys=` says otherwise.
`temperature=0` is greedy: the prompt is decoded once and the completion repeated n times.

A vLLM backend (`load_vllm`, the optional extra `chainforge-r1[vllm]`) serves the same call: pass the
`VLLMModel` it returns as `model`.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

from chainforge.sampling.core import Completion, _Progress
from chainforge.sampling.hf import _generate_hf
from chainforge.sampling.prompts import Prompt
from chainforge.sampling.vllm_backend import VLLMModel, _generate_vllm

BatchSize = Union[int, str, None]  # an int, or "auto"/None: sized from free memory


def generate(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    n: int = 1,
    temperature: float = 0.7,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    seed: int = 0,
    batch_size: BatchSize = "auto",
    system_prompt: Optional[str] = None,
    on_batch: Optional[Callable[[int], None]] = None,
    keys: Optional[Sequence[int]] = None,
    progress: bool = False,
    on_prompt: Optional[Callable[[int, list[Completion]], None]] = None,
) -> list[list[Completion]]:
    """`n` completions for each prompt, in prompt order. `temperature=0` is greedy.

    `batch_size`: rows (candidates) decoded together, or "auto" to fit memory. `on_batch(k)` is
    called as k more completions are done. `keys`: per prompt, what seeds its rows (default: its
    position). `progress`: a progress bar with completions/s on stderr. `on_prompt(i, comps)` is
    called once prompt i's n completions are all done (the HF engine: as it happens, in the
    order prompts finish; vLLM: at the end).
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    if keys is not None and len(keys) != len(prompts):
        raise ValueError(f"{len(keys)} keys for {len(prompts)} prompts")
    if not prompts:
        return []
    keys = list(range(len(prompts))) if keys is None else [int(k) for k in keys]
    greedy = temperature <= 0
    draws = 1 if greedy else n  # greedy: every sample would be the same
    def repeat(comps: list[Completion]) -> list[Completion]:
        if not (greedy and n > 1):
            return comps
        return [Completion(comps[0].text, comps[0].tokens, comps[0].finished, comps[0].ids) for _ in range(n)]

    finished = None if on_prompt is None else (lambda i, comps: on_prompt(i, repeat(comps)))
    with _Progress(len(prompts) * n, progress, on_batch) as report:
        if isinstance(model, VLLMModel):
            drawn = _generate_vllm(model, tokenizer, prompts, draws, temperature, top_p, max_new_tokens,
                                   seed, keys, system_prompt, lambda k: report(k * n // draws))
            if finished is not None:
                for i, comps in enumerate(drawn):
                    finished(i, comps)
        else:
            drawn = _generate_hf(model, tokenizer, prompts, draws, temperature, top_p, max_new_tokens,
                                 seed, keys, batch_size, system_prompt, lambda k: report(k * n // draws), finished)
    return [repeat(c) for c in drawn]
