"""The plain decode loop the engine had before `sampling.hf`: batch after batch (each runs until its
longest row stops), the KV cache grown by `torch.cat` (transformers' DynamicCache), and every row's
draw an exponential race over the whole vocabulary with one uniform vector per row and step.

Kept as the reference the engine is measured against (scripts/bench_sampling.py, bench_eval.py:
`CHAINFORGE_SAMPLER=reference` selects it) and checked against (tests/test_sampling.py: the same
distribution). Its draws differ from the engine's for the same seed: it spends the row's generator
differently."""

from __future__ import annotations

from typing import Optional

from chainforge.sampling.core import Completion, row_seed
from chainforge.sampling.rows import completion as _completion, last_logits as _forward, prepare_rows

# Compact the cache once this fraction of a batch's rows have stopped (copying it costs a step).
_COMPACT_AT = 0.25


def generate_reference(model, tokenizer, prompts, draws, temperature, top_p, max_new_tokens, seed, keys,
                 batch_size, system_prompt, report) -> list[list[Completion]]:
    encoded, rows, batch_size, stops, pad_id = prepare_rows(model, tokenizer, prompts, draws, max_new_tokens,
                                                            batch_size, system_prompt)
    results: list[list[Optional[Completion]]] = [[None] * draws for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            new_ids = _decode_batch(model, [encoded[i] for i, _ in batch],
                                    [row_seed(seed, keys[i], j) for i, j in batch], temperature, top_p,
                                    max_new_tokens, stops, pad_id)
            for (i, j), ids in zip(batch, new_ids):
                results[i][j] = _completion(tokenizer, ids, stops)
            report(len(batch))
    finally:
        if was_training:
            model.train()
    return results  # type: ignore[return-value]


def _decode_batch(model, prompt_ids: list[list[int]], seeds: list[int], temperature: float, top_p: float,
                  max_new_tokens: int, stops: list[int], pad_id: int) -> list[list[int]]:
    """Decode one batch of rows; rows with the same prompt (adjacent after sorting) share a prefill."""
    import torch
    from transformers import DynamicCache

    device = next(model.parameters()).device
    # Distinct prompts of the batch, and for each row which of them it continues.
    uniques: list[list[int]] = []
    owner: list[int] = []
    for ids in prompt_ids:
        if not uniques or uniques[-1] is not ids:
            uniques.append(ids)
        owner.append(len(uniques) - 1)
    width = max(len(u) for u in uniques)
    input_ids = torch.full((len(uniques), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(uniques), width), dtype=torch.long)
    for r, ids in enumerate(uniques):
        input_ids[r, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention[r, width - len(ids):] = 1
    input_ids, attention = input_ids.to(device), attention.to(device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)

    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    stop_set = torch.tensor(stops, device=device)
    rows = len(prompt_ids)
    out: list[list[int]] = [[] for _ in range(rows)]
    active = list(range(rows))  # batch position -> row
    done = [False] * rows

    with torch.inference_mode():
        cache = DynamicCache()
        logits = _forward(model, input_ids, attention, positions, cache)
        expand = torch.tensor(owner, device=device)
        if len(uniques) != rows:
            cache.batch_select_indices(expand)
        logits, attention = logits[expand], attention[expand]
        next_pos = positions[expand, -1:] + 1
        for step in range(max_new_tokens):
            tokens = _pick(logits, [generators[r] for r in active], temperature, top_p)
            stopped = torch.isin(tokens, stop_set).tolist()
            for b, (r, t) in enumerate(zip(active, tokens.tolist())):
                if not done[r]:
                    out[r].append(t)
                    done[r] = stopped[b]
            if all(done[r] for r in active) or step == max_new_tokens - 1:
                break
            finished = [b for b, r in enumerate(active) if done[r]]
            if finished and len(finished) >= _COMPACT_AT * len(active):
                keep = torch.tensor([b for b, r in enumerate(active) if not done[r]], device=device)
                cache.batch_select_indices(keep)
                tokens, attention, next_pos = tokens[keep], attention[keep], next_pos[keep]
                active = [r for r in active if not done[r]]
            attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=1)
            logits = _forward(model, tokens[:, None], attention, next_pos, cache)
            next_pos = next_pos + 1
    return out


def _pick(logits, generators, temperature: float, top_p: float):
    """Next token per row: argmax when greedy, else a draw from the row's own generator.

    The draw is the exponential race (argmax of p / E, E ~ Exp(1)), which picks token v with
    probability p_v — it needs one uniform vector per row, taken from that row's generator."""
    import torch

    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    vocab = probs.shape[-1]
    uniform = torch.stack([torch.rand(vocab, generator=g, device=probs.device) for g in generators])
    race = probs / (-torch.log(uniform.clamp_min(1e-12)))
    return race.argmax(-1)
