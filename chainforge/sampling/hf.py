"""Hugging Face models: our own decode loop.

- Continuous batching: the batch is a fixed set of slots; when rows stop, the next rows of the
  length-sorted queue are prefilled and take their slots, so the batch stays full until the queue
  runs dry (then finished rows leave it). A prompt's rows admitted together share one prefill.
- The prefix every prompt shares (the system prompt and chat template, typically) is prefilled
  once; each admission prefills only what follows it.
- The KV cache is preallocated per slot and written in place (`_SlotCache`): no `torch.cat` per
  step, no copy when a row leaves or enters; attention reads only the window of columns that an
  active row still uses.
- One draw per row and step, by inverse CDF: the row's uniforms come from its own generator
  (`row_seed`), drawn once when the row enters; the nucleus (top-p) is found among the top-k
  logits (the whole vocabulary is sorted only for a row whose nucleus is wider than k).
- Per step, Python touches only the rows that stopped: tokens, counts and stop flags stay tensors.
- On CPU in bf16, every linear layer's weight is laid out for oneDNN once per call, not once per
  step (sampling/packed.py); the numbers are the same.
"""

from __future__ import annotations

import os
from typing import Optional

from chainforge.sampling.core import Completion, row_seed
from chainforge.sampling.packed import packed_linears
from chainforge.sampling.rows import completion as _completion, last_logits as _forward, prepare_rows

# Admit queued rows once this share of the slots is free (each admission is one prefill call).
_REFILL_AT = 0.125
# With nothing left to admit, drop the free slots once they are this share of the batch.
_COMPACT_AT = 0.25
# top-p: the nucleus is looked for among this many top logits first.
_TOP_K = 64
# Free columns kept at the end of the cache so that it is re-laid out every this many steps at most.
_SLACK = 64
_FREE = 1 << 62  # a free slot's first column
# Shorter common prefixes are prefilled with each prompt (sharing them saves less than it costs).
_MIN_PREFIX = 16
# `CHAINFORGE_SAMPLER=reference`: the plain loop of sampling/reference.py (benchmarks' "before").
SAMPLER_ENV = "CHAINFORGE_SAMPLER"


def _generate_hf(model, tokenizer, prompts, draws, temperature, top_p, max_new_tokens, seed, keys,
                 batch_size, system_prompt, report, on_prompt=None) -> list[list[Completion]]:
    if os.environ.get(SAMPLER_ENV) == "reference":
        from chainforge.sampling.reference import generate_reference

        drawn = generate_reference(model, tokenizer, prompts, draws, temperature, top_p, max_new_tokens, seed, keys,
                                   batch_size, system_prompt, report)
        for i, comps in enumerate(drawn if on_prompt is not None else []):
            on_prompt(i, comps)
        return drawn
    encoded, rows, batch_size, stops, pad_id = prepare_rows(model, tokenizer, prompts, draws, max_new_tokens,
                                                            batch_size, system_prompt)
    results: list[list[Optional[Completion]]] = [[None] * draws for _ in prompts]
    missing = [draws] * len(prompts)

    def done(row: int, ids: list[int]) -> None:
        i, j = rows[row]
        results[i][j] = _completion(tokenizer, ids, stops)
        missing[i] -= 1
        if missing[i] == 0 and on_prompt is not None:
            on_prompt(i, results[i])

    was_training = model.training
    model.eval()
    try:
        with packed_linears(model):
            decode(model, [encoded[i] for i, _ in rows], [row_seed(seed, keys[i], j) for i, j in rows],
                   temperature, top_p, max_new_tokens, stops, pad_id, min(batch_size, len(rows)), done, report)
    finally:
        if was_training:
            model.train()
    return results  # type: ignore[return-value]


def decode(model, prompt_ids: list[list[int]], seeds: list[int], temperature: float, top_p: float,
           max_new_tokens: int, stops: list[int], pad_id: int, slots: int, done, report=None) -> None:
    """Decode every row (`prompt_ids[r]`, drawing from `seeds[r]`) through `slots` batch slots;
    `done(r, ids)` receives each row's generated ids (stop token included) as it finishes, and
    `report(k)` the number that just finished. Rows whose prompts are the same list object and
    adjacent share their prefill when they are admitted together."""
    import torch

    device = next(model.parameters()).device
    greedy = temperature <= 0
    stop_set = torch.tensor(stops, device=device)
    cache = _SlotCache(slots, max(len(p) for p in prompt_ids) + max_new_tokens, device,
                       _common_prefix(prompt_ids))
    row_of = [-1] * slots  # slot -> row, -1 when free
    tokens = torch.full((slots,), pad_id, dtype=torch.long, device=device)  # each slot's next input
    positions = torch.zeros((slots,), dtype=torch.long, device=device)
    counts = torch.zeros((slots,), dtype=torch.long, device=device)  # tokens generated so far
    out = torch.zeros((slots, max_new_tokens), dtype=torch.long, device=device)
    uniforms = None if greedy else torch.zeros((slots, max_new_tokens), dtype=torch.float64, device=device)
    queue = 0  # next row to admit

    def admit(free: list[int]) -> None:
        nonlocal queue, tokens
        take = list(range(queue, min(queue + len(free), len(prompt_ids))))
        queue = take[-1] + 1
        chosen = free[:len(take)]
        uniques: list[list[int]] = []
        owner: list[int] = []
        for r in take:
            if not uniques or uniques[-1] is not prompt_ids[r]:
                uniques.append(prompt_ids[r])
            owner.append(len(uniques) - 1)
        logits, prefill_mask = cache.admit(model, uniques, owner, chosen, pad_id)
        index = torch.tensor(chosen, device=device)
        lengths = torch.tensor([len(prompt_ids[r]) for r in take], device=device)
        positions[index] = lengths
        counts[index] = 0
        if uniforms is not None:
            drawn = [torch.rand(max_new_tokens, dtype=torch.float64, generator=torch.Generator().manual_seed(seeds[r]))
                     for r in take]
            uniforms[index] = torch.stack(drawn).to(device)
        for s, r in zip(chosen, take):
            row_of[s] = r
        first = _pick(logits, None if uniforms is None else uniforms[index, 0], temperature, top_p)
        step(index, first)

    def step(index, picked) -> None:
        """Record the token each slot in `index` just drew; free the slots whose rows stopped."""
        out[index, counts[index]] = picked
        counts[index] += 1
        tokens[index] = picked
        ended = torch.isin(picked, stop_set) | (counts[index] >= max_new_tokens)
        finished = index[ended].tolist()
        for s in finished:
            done(row_of[s], out[s, :int(counts[s])].tolist())
            row_of[s] = -1
        if finished:
            cache.release(finished)
            if report is not None:
                report(len(finished))

    with torch.inference_mode():
        while True:
            free = [s for s in range(len(row_of)) if row_of[s] < 0]
            waiting = queue < len(prompt_ids)
            if waiting and free and (len(free) >= _REFILL_AT * len(row_of) or len(free) == len(row_of)):
                admit(free)
                continue  # rows that stopped on their first token left their slot free again
            if len(free) == len(row_of):
                break
            if not waiting and len(free) >= _COMPACT_AT * len(row_of):
                keep = [s for s in range(len(row_of)) if row_of[s] >= 0]
                index = torch.tensor(keep, device=device)
                cache.select(index)
                tokens, positions, counts, out = tokens[index], positions[index], counts[index], out[index]
                if uniforms is not None:
                    uniforms = uniforms[index]
                row_of = [row_of[s] for s in keep]
            logits = cache.step(model, tokens, positions)
            positions += 1
            active = torch.tensor([s for s in range(len(row_of)) if row_of[s] >= 0], device=device)
            u = None if uniforms is None else uniforms[active, counts[active]]
            step(active, _pick(logits[active], u, temperature, top_p))


class _SlotCache:
    """The KV cache of a batch of slots, for transformers models with full attention in every layer.

    Each layer holds [slots, kv_heads, capacity, head_dim] keys and values; all slots write their
    next token at the same column `end`, a new row's prompt goes right-aligned before `end`, and
    `mask` marks the columns each slot's row attends to. Attention sees columns [start, end),
    `start` being the first column an active row uses. When `end` reaches the capacity the live
    window is moved to the front (one copy every `_SLACK` steps or more)."""

    def __init__(self, slots: int, row_tokens: int, device, prefix: Optional[list[int]] = None):
        import torch

        self.slots, self.device = slots, device
        self.prefix = prefix or []  # prefilled once, its KV (per layer) in `prefix_kv`
        self.prefix_kv: Optional[list] = None
        self.capacity = row_tokens + _SLACK
        self.start = self.end = 0
        self.mask = torch.zeros((slots, self.capacity), dtype=torch.long, device=device)
        self.first = [_FREE] * slots  # first column of each slot's row
        self.layers: list = []  # per layer: [keys, values]

    # ---- what transformers calls (the Cache interface, see _HFCache)
    def update(self, key_states, value_states, layer_idx: int):
        q = key_states.shape[-2]
        keys, values = self._buffers(layer_idx, key_states, value_states)
        keys[:, :, self.end:self.end + q] = key_states
        values[:, :, self.end:self.end + q] = value_states
        return keys[:, :, self.start:self.end + q], values[:, :, self.start:self.end + q]

    def _buffers(self, layer_idx: int, k, v):
        """Layer `layer_idx`'s [keys, values] buffers, allocated (shaped like `k`, `v`) on first use."""
        import torch

        if layer_idx == len(self.layers):
            shape = (self.slots, k.shape[1], self.capacity, k.shape[-1])
            self.layers.append([torch.zeros(shape, dtype=k.dtype, device=self.device),
                                torch.zeros(shape, dtype=v.dtype, device=self.device)])
        return self.layers[layer_idx]

    # ---- what the decode loop calls
    def step(self, model, tokens, positions):
        """One decode step of every slot: next-token logits [slots, vocab] (float32)."""
        if self.end == self.capacity:
            self._relayout(list(range(self.slots)), 0)
        self.mask[:, self.end] = 1  # free slots attend to their own (ignored) token only
        mask = self.mask[:, self.start:self.end + 1]
        if _keep_decode_mask(model, self.device):
            mask = mask[:, None, None, :].bool()  # [slots, 1, 1, columns]: transformers uses a 4D mask as is
        logits = _forward(model, tokens[:, None], mask, positions[:, None], _HFCache(self))
        self.end += 1
        return logits

    def admit(self, model, uniques: list[list[int]], owner: list[int], slots: list[int], pad_id: int):
        """Prefill the distinct prompts `uniques` (a plain cache of their own) and copy each into the
        slots of its rows (`owner[k]`: the prompt of `slots[k]`). Returns the rows' first logits."""
        import torch
        from transformers import DynamicCache

        shared = len(self.prefix)
        if shared and self.prefix_kv is None:
            ids = torch.tensor([self.prefix], dtype=torch.long, device=self.device)
            once = DynamicCache()
            _forward(model, ids, torch.ones_like(ids), torch.arange(shared, device=self.device)[None], once)
            self.prefix_kv = [(layer.keys, layer.values) for layer in once.layers]
        suffixes = [u[shared:] for u in uniques]
        tail = max(len(u) for u in suffixes)
        width = shared + tail
        input_ids = torch.full((len(uniques), tail), pad_id, dtype=torch.long)
        attention = torch.zeros((len(uniques), width), dtype=torch.long)
        attention[:, :shared] = 1
        for r, ids in enumerate(suffixes):
            input_ids[r, tail - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[r, width - len(ids):] = 1
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        positions = ((attention.cumsum(-1) - 1).clamp(min=0))[:, shared:]
        prefill = DynamicCache()
        for layer_idx, (k, v) in enumerate(self.prefix_kv or []):
            prefill.update(k.expand(len(uniques), -1, -1, -1), v.expand(len(uniques), -1, -1, -1), layer_idx)
        logits = _forward(model, input_ids, attention, positions, prefill)
        if self.end < width:  # the prompt is longer than the columns before `end`: make room on the left
            self._relayout(list(range(self.slots)), width - (self.end - self.start))
        index = torch.tensor(slots, device=self.device)
        rows = torch.tensor(owner, device=self.device)
        lo = self.end - width
        for layer_idx, layer in enumerate(prefill.layers):
            k, v = layer.keys, layer.values
            keys, values = self._buffers(layer_idx, k, v)
            keys[index, :, lo:self.end] = k[rows]
            values[index, :, lo:self.end] = v[rows]
        self.mask[index] = 0
        self.mask[index, lo:self.end] = attention[rows]
        for s, o in zip(slots, owner):
            self.first[s] = self.end - len(uniques[o])
        self.start = min(self.first)
        return logits[rows], attention

    def release(self, slots: list[int]) -> None:
        self.mask[slots] = 0
        for s in slots:
            self.first[s] = _FREE
        self.start = min(min(self.first), self.end)

    def select(self, index) -> None:
        """Keep only the slots in `index` (a tensor), in that order."""
        self._relayout(index.tolist(), 0)

    def _relayout(self, keep: list[int], left: int) -> None:
        """Copy the live window of the slots `keep` to the front of new buffers, `left` free columns
        before it."""
        import torch

        width = self.end - self.start
        self.capacity = max(self.capacity, left + width + _SLACK)
        index = torch.tensor(keep, device=self.device)
        for layer in self.layers:
            for i, old in enumerate(layer):
                new = torch.zeros((len(keep), old.shape[1], self.capacity, old.shape[-1]), dtype=old.dtype,
                                  device=self.device)
                new[:, :, left:left + width] = old[index, :, self.start:self.end]
                layer[i] = new
        mask = torch.zeros((len(keep), self.capacity), dtype=torch.long, device=self.device)
        mask[:, left:left + width] = self.mask[index, self.start:self.end]
        self.mask = mask
        shift = left - self.start
        self.first = [_FREE if self.first[s] == _FREE else self.first[s] + shift for s in keep]
        self.slots = len(keep)
        self.start, self.end = left, left + width


def _keep_decode_mask(model, device) -> bool:
    """Whether a decode step hands transformers its mask as a 4D boolean tensor (used as is) rather
    than the 2D one (from which transformers builds its own): on CPU with SDPA attention.

    From a 2D mask with no column masked (every slot busy and every row's prompt the same length:
    the toy task's prompts, GRPO's groups), transformers drops the mask and runs grouped-query
    attention as SDPA's `enable_gqa` with no mask, which on CPU took 3.6 / 6.7 / 9.3 ms per layer against
    0.8 / 1.1 / 1.6 ms for the same attention with a mask (SmolLM2's 3 KV heads × 3 query heads, 64
    rows, bf16, 110 / 200 / 280 columns; dev machine, 2026-12-07). With a mask it takes that faster
    path every step. On a GPU dropping the mask is what selects the fast kernels, so nothing changes
    there."""
    on_cpu = getattr(device, "type", str(device)) == "cpu"
    return on_cpu and getattr(getattr(model, "config", None), "_attn_implementation", None) == "sdpa"


def _common_prefix(prompts: list[list[int]]) -> list[int]:
    """The token prefix all prompts share, less at least one token of each (a prompt's last token
    must run to give its first logits); empty when shorter than `_MIN_PREFIX`."""
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        if p is first:
            continue
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
        if n < _MIN_PREFIX:
            return []
    return list(first[:n]) if n >= _MIN_PREFIX else []


def _hf_cache_class():
    """transformers' Cache over a `_SlotCache` (built once: transformers is imported lazily)."""
    global _HFCacheClass
    if _HFCacheClass is None:
        from transformers.cache_utils import Cache

        class SlotCacheView(Cache):
            def __init__(self, slots: _SlotCache):
                self.slots = slots
                self.layers = []
                self.layer_class_to_replicate = None
                self.offloading = False

            def __len__(self):
                return len(self.slots.layers)

            def update(self, key_states, value_states, layer_idx, *args, **kwargs):
                return self.slots.update(key_states, value_states, layer_idx)

            def get_seq_length(self, layer_idx: int = 0) -> int:
                return self.slots.end - self.slots.start

            def get_query_offset(self, layer_idx: int = 0) -> int:
                return self.get_seq_length(layer_idx)

            def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
                return self.get_seq_length() + query_length, 0

            def get_max_length(self, layer_idx=None) -> int:
                return -1

            @property
            def is_compileable(self) -> bool:
                return False

            @property
            def is_sliding(self) -> list[bool]:
                return [False] * len(self.slots.layers)

        _HFCacheClass = SlotCacheView
    return _HFCacheClass


_HFCacheClass = None


def _HFCache(slots: _SlotCache):
    return _hf_cache_class()(slots)


def _pick(logits, uniforms, temperature: float, top_p: float):
    """Next token per row: argmax when greedy, else a draw from softmax(logits / temperature) cut
    to its top-p nucleus, by inverse CDF with the row's uniform (`uniforms[r]` in [0, 1), float64).

    The nucleus is the smallest prefix of the tokens sorted by probability whose mass reaches
    `top_p` (the first always stays), found among the top `_TOP_K` logits; a row whose nucleus is
    wider is sorted whole. Without top-p the draw walks the whole vocabulary in blocks of 256:
    a cumulative sum over the block totals picks the block, then one within the block."""
    import torch

    if temperature <= 0:
        return logits.argmax(-1)
    z = logits / temperature
    if top_p < 1.0:
        return _pick_nucleus(z, uniforms, top_p)
    rows, vocab = z.shape
    block = 256
    weights = torch.exp(z - z.max(-1, keepdim=True).values)
    pad = (-vocab) % block
    if pad:
        weights = torch.nn.functional.pad(weights, (0, pad))
    blocks = weights.view(rows, -1, block)
    totals = blocks.sum(-1, dtype=torch.float64).cumsum(-1)
    target = torch.minimum(uniforms * totals[:, -1], totals[:, -1] * (1 - 1e-12))
    b = torch.searchsorted(totals, target[:, None], right=True).clamp(max=totals.shape[1] - 1)
    before = torch.where(b > 0, totals.gather(1, (b - 1).clamp(min=0)), torch.zeros_like(target[:, None]))
    inner = blocks[torch.arange(rows, device=z.device), b[:, 0]].to(torch.float64).cumsum(-1)
    # where in the block the target falls, as a share of the block's own total
    share = ((target[:, None] - before) / (totals.gather(1, b) - before)).clamp(0.0, 1.0 - 1e-12)
    j = torch.searchsorted(inner, share * inner[:, -1:], right=True).clamp(max=block - 1)
    return b[:, 0] * block + j[:, 0]


def _pick_nucleus(z, uniforms, top_p: float):
    import torch

    rows, vocab = z.shape
    k = min(_TOP_K, vocab)
    lse = torch.logsumexp(z, -1, keepdim=True)
    top, order = z.topk(k, dim=-1)
    probs = torch.exp(top - lse)
    wide = (probs.sum(-1) < top_p).nonzero().flatten()
    token = _nucleus_draw(probs, order, uniforms, top_p)
    if wide.numel():  # the nucleus reaches past the top k: sort these rows whole
        sorted_z, full_order = z[wide].sort(dim=-1, descending=True)
        token[wide] = _nucleus_draw(torch.exp(sorted_z - lse[wide]), full_order, uniforms[wide], top_p)
    return token


def _nucleus_draw(probs, order, uniforms, top_p: float):
    """Draw among `probs` (sorted descending, per row) within the top-p prefix; `order` maps back."""
    import torch

    drop = (probs.cumsum(-1) - probs) >= top_p
    kept = probs.masked_fill(drop, 0.0).to(torch.float64)
    cdf = kept.cumsum(-1)
    target = (uniforms * cdf[:, -1]).clamp(max=cdf[:, -1] * (1 - 1e-12))
    j = torch.searchsorted(cdf, target[:, None], right=True).clamp(max=probs.shape[1] - 1)
    return order.gather(1, j)[:, 0]
