"""The one generation engine: model + prompts → n completions per prompt.

Used by collect's local teacher, the structure check after sft, reject, eval and distill.

How it batches: every (prompt, sample) pair is one row; rows are sorted by prompt length so a
batch holds prompts of similar length (less padding, short prompts don't wait on long ones), then
generated `batch_size` rows at a time with left padding and the KV cache, stopping each row at
EOS. Results come back in the caller's order. Under a seed the output is deterministic: each batch
draws from its own generator seeded from (seed, batch index).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

Prompt = Union[str, Sequence[dict]]


@dataclass
class Completion:
    text: str
    tokens: int  # generated tokens, EOS included
    finished: bool  # True when it stopped at EOS rather than at max_new_tokens


def as_messages(prompt: Prompt, system_prompt: Optional[str] = None) -> list[dict]:
    """A prompt as chat messages: a string becomes one user turn."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = [dict(m) for m in prompt]
    if system_prompt and not (messages and messages[0].get("role") == "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def render_prompt(tokenizer, prompt: Prompt, system_prompt: Optional[str] = None) -> str:
    """The text the model sees: the chat template with the assistant turn opened."""
    return tokenizer.apply_chat_template(as_messages(prompt, system_prompt), tokenize=False,
                                         add_generation_prompt=True)


def stop_token_ids(tokenizer, model=None) -> list[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, (list, tuple)):
        ids.update(int(i) for i in gen_eos)
    # Chat models end a turn with <|im_end|> even when their eos is another token.
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    if im_end is not None:
        ids.add(int(im_end))
    return sorted(ids)


def generate(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    n: int = 1,
    temperature: float = 0.7,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    seed: int = 0,
    batch_size: int = 16,
    system_prompt: Optional[str] = None,
    on_batch: Optional[Callable[[int], None]] = None,
) -> list[list[Completion]]:
    """`n` completions for each prompt, in prompt order. `temperature=0` is greedy."""
    import torch
    from transformers import GenerationConfig

    if n < 1:
        raise ValueError("n must be at least 1")
    texts = [render_prompt(tokenizer, p, system_prompt) for p in prompts]
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    rows = [(i, j) for i in range(len(prompts)) for j in range(n)]
    rows.sort(key=lambda r: (len(encoded[r[0]]), r[0], r[1]))

    stops = stop_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    greedy = temperature <= 0
    gen_config = GenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else temperature,
        top_p=None if greedy else top_p,
        top_k=0 if not greedy else None,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=stops,
    )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results: list[list[Optional[Completion]]] = [[None] * n for _ in prompts]
    try:
        for b, start in enumerate(range(0, len(rows), batch_size)):
            batch = rows[start:start + batch_size]
            width = max(len(encoded[i]) for i, _ in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for r, (i, _) in enumerate(batch):
                ids = encoded[i]
                input_ids[r, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
                attention[r, width - len(ids):] = 1
            torch.manual_seed(seed * 100_003 + b)
            with torch.inference_mode():
                out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                     generation_config=gen_config)
            new = out[:, width:].tolist()
            for r, (i, j) in enumerate(batch):
                results[i][j] = _completion(tokenizer, new[r], stops)
            if on_batch:
                on_batch(len(batch))
    finally:
        if was_training:
            model.train()
    return results  # type: ignore[return-value]


def _completion(tokenizer, ids: list[int], stops: list[int]) -> Completion:
    stop_at = next((k for k, t in enumerate(ids) if t in stops), None)
    kept = ids if stop_at is None else ids[:stop_at]
    return Completion(
        text=tokenizer.decode(kept, skip_special_tokens=True),
        tokens=len(ids) if stop_at is None else stop_at + 1,
        finished=stop_at is not None,
    )
