"""What both decode loops (sampling/hf.py and sampling/reference.py) share: the rows they start from,
the forward call that returns the last position's logits, and the Completion a row's ids make."""

from __future__ import annotations

from chainforge.compat import cache_kwarg
from chainforge.sampling.core import Completion, stop_token_ids
from chainforge.sampling.memory import auto_batch_size
from chainforge.sampling.prompts import render_prompt


def prepare_rows(model, tokenizer, prompts, draws, max_new_tokens, batch_size, system_prompt):
    """What both decode loops start from: each prompt rendered and encoded, the (prompt, draw) rows
    sorted by prompt length, the batch size (`auto`: what memory allows), the stop ids and the pad id."""
    texts = [render_prompt(tokenizer, p, system_prompt) for p in prompts]
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    rows = [(i, j) for i in range(len(prompts)) for j in range(draws)]
    rows.sort(key=lambda r: (len(encoded[r[0]]), r[0], r[1]))
    if batch_size in (None, "auto"):
        longest = max(len(e) for e in encoded)
        batch_size = auto_batch_size(model, longest + max_new_tokens)
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    stops = stop_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    return encoded, rows, batch_size, stops, pad_id


def last_logits(model, input_ids, attention, positions, cache):
    """Logits of the last position only (the full-vocabulary projection of a prefill is waste)."""
    kv = {cache_kwarg(model): cache}
    try:
        out = model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                    use_cache=True, logits_to_keep=1, **kv)
    except TypeError:  # a model class without logits_to_keep
        out = model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                    use_cache=True, **kv)
    return out.logits[:, -1, :].float()


def completion(tokenizer, ids: list[int], stops: list[int]) -> Completion:
    """A row's generated `ids` (the stop token included when it stopped) as a Completion."""
    stop_at = next((k for k, t in enumerate(ids) if t in stops), None)
    kept = ids if stop_at is None else ids[:stop_at]
    return Completion(
        text=tokenizer.decode(kept, skip_special_tokens=True),
        tokens=len(ids) if stop_at is None else stop_at + 1,
        finished=stop_at is not None,
        ids=list(ids) if stop_at is None else list(ids[:stop_at + 1]),
    )
