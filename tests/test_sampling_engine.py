"""The decode loop of sampling/hf.py against plain references: the same tokens as a one-row loop
without a KV cache, and the same distribution as softmax + top-p computed the textbook way (and
as the previous sampler, sampling/reference.py). Speed is measured by scripts/bench_*.py."""

from __future__ import annotations

import math

import pytest


@pytest.fixture(scope="module")
def loaded(tiny_model):
    from chainforge.models import load_model, load_tokenizer, resolve_model

    ref = resolve_model(str(tiny_model))
    return load_model(ref), load_tokenizer(ref)


def _uniforms(seed: int, n: int):
    import torch

    return torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _one_row(model, prompt: list[int], seed: int, temperature: float, top_p: float, max_new: int,
             stops: list[int]) -> list[int]:
    """The reference: one row, the whole sequence recomputed every step (no cache, no padding), and
    the row's uniforms spent one per token."""
    import torch

    from chainforge.sampling.hf import _pick

    u = _uniforms(seed, max_new)
    ids = list(prompt)
    out: list[int] = []
    with torch.inference_mode():
        for t in range(max_new):
            logits = model(input_ids=torch.tensor([ids])).logits[:, -1, :].float()
            token = int(_pick(logits, u[t:t + 1], temperature, top_p)[0])
            out.append(token)
            ids.append(token)
            if token in stops:
                break
    return out


@pytest.mark.parametrize("temperature,top_p,slots,system", [(1.0, 1.0, 3, ""), (0.7, 0.9, 2, ""), (0.0, 1.0, 4, ""),
                                                     (1.3, 0.5, 5, ""), (1.0, 1.0, 3, "long"), (0.8, 0.95, 4, "long")])
def test_the_slot_loop_draws_what_a_one_row_loop_draws(loaded, temperature, top_p, slots, system, monkeypatch):
    """Rows of different lengths (frequent tokens count as stops), few slots: rows leave, queued
    rows are prefilled into freed slots, the free slots are compacted away at the end and the cache
    is re-laid out when it fills (a small slack forces it). With a long shared start (a system
    prompt), that prefix is prefilled once and every admission continues from its KV."""
    from chainforge.sampling import hf

    model, tok = loaded
    monkeypatch.setattr(hf, "_SLACK", 5)
    start = "You are a helpful assistant. Answer with the final number. Think step by step. " if system else ""
    prompts = [tok(start + t, add_special_tokens=False)["input_ids"] for t in
               ("What is 1 + 1?", "Hi", "A longer prompt about the quick brown fox jumps", "7 - 3 =")]
    assert (len(hf._common_prefix(prompts)) >= hf._MIN_PREFIX) == bool(system)
    rows = [p for p in prompts for _ in range(3)]  # each prompt 3 times in a row: shared prefills
    seeds = [1000 + r for r in range(len(rows))]
    stops = [tok.convert_tokens_to_ids(t) for t in ("Ġthe", "e", "Ġ")] + [tok.eos_token_id]
    got: dict[int, list[int]] = {}
    finished = []
    hf.decode(model, rows, seeds, temperature, top_p, 24, stops, tok.pad_token_id, slots, got.__setitem__,
              finished.append)
    assert sorted(got) == list(range(len(rows))) and sum(finished) == len(rows)
    if temperature > 0:  # (greedy rows of one prompt are all the same)
        assert len({len(v) for v in got.values()}) > 2, "rows of one length would not exercise refilling"
    for r, prompt in enumerate(rows):
        assert got[r] == _one_row(model, prompt, seeds[r], temperature, top_p, 24, stops), f"row {r}"


def test_a_decode_step_keeps_its_mask_when_no_column_is_masked(loaded, monkeypatch):
    """Rows of one prompt length filling every slot leave no column masked; transformers would then
    drop the mask and run SDPA's unmasked `enable_gqa` path, several times slower on CPU. Every
    decode step must reach SDPA with a mask, and still draw what the one-row loop draws."""
    import torch.nn.functional as F

    from chainforge.sampling import hf

    model, tok = loaded
    assert model.config.num_attention_heads > model.config.num_key_value_heads  # grouped-query attention
    prompt = tok("What is 12 + 34?", add_special_tokens=False)["input_ids"]
    rows = [prompt] * 4
    seeds = [7, 8, 9, 10]
    stops = [tok.eos_token_id]
    calls: list[tuple[int, bool]] = []  # (query positions, had a mask) of each SDPA call
    real = F.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, *args, **kwargs):
        calls.append((query.shape[-2], attn_mask is not None))
        return real(query, key, value, attn_mask, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    got: dict[int, list[int]] = {}
    hf.decode(model, rows, seeds, 1.0, 1.0, 12, stops, tok.pad_token_id, 4, got.__setitem__)
    monkeypatch.setattr(F, "scaled_dot_product_attention", real)
    layers = model.config.num_hidden_layers
    unmasked_decode = [c for c in calls if c == (1, False)]
    assert not unmasked_decode, f"{len(unmasked_decode) // layers} decode steps ran SDPA without a mask"
    masked = [c for c in calls if c[1]]
    assert len(masked) >= 11 * layers  # every decode step after the prefill's first token, in every layer
    for r in range(len(rows)):
        assert got[r] == _one_row(model, prompt, seeds[r], 1.0, 1.0, 12, stops), f"row {r}"


def _exact(logits, temperature: float, top_p: float):
    """softmax(logits / T), cut to the smallest prefix (by probability) whose mass reaches top_p."""
    import torch

    probs = torch.softmax(logits.double() / temperature, -1)
    sorted_p, order = probs.sort(descending=True)
    keep = (sorted_p.cumsum(-1) - sorted_p) < top_p
    out = torch.zeros_like(probs)
    out[order[keep]] = sorted_p[keep]
    return out / out.sum()


def _chi_square_p(counts, expected) -> float:
    """p-value of Pearson's chi-square (Wilson-Hilferty's normal approximation of its tail), bins with
    expected < 5 pooled; a draw outside the support fails."""
    assert all(c == 0 for c, e in zip(counts, expected) if e == 0), "a token outside the nucleus was drawn"
    obs, exp, pool_o, pool_e = [], [], 0, 0.0
    for c, e in zip(counts, expected):
        if e >= 5:
            obs.append(c)
            exp.append(e)
        elif e > 0:
            pool_o, pool_e = pool_o + c, pool_e + e
    if pool_e > 0:
        obs.append(pool_o)
        exp.append(pool_e)
    stat = sum((o - e) ** 2 / e for o, e in zip(obs, exp))
    k = max(len(obs) - 1, 1)
    z = ((stat / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.6, 0.95), (1.0, 0.5), (2.0, 0.999)])
def test_draws_follow_softmax_and_top_p(temperature, top_p):
    """20,000 draws from fixed logits (a 49,152-token vocabulary shaped like SmolLM2's, and a
    300-token one whose blocks need padding) against the exact probabilities."""
    import torch

    from chainforge.sampling.hf import _pick

    for vocab in (49152, 300):
        g = torch.Generator().manual_seed(vocab)
        logits = torch.randn(vocab, generator=g) * 3
        logits[:5] += 6  # a few likely tokens, and a long tail
        n = 20_000
        drawn = torch.cat([_pick(logits.expand(2_000, vocab), torch.rand(2_000, dtype=torch.float64, generator=g),
                                 temperature, top_p) for _ in range(n // 2_000)])
        exact = _exact(logits, temperature, top_p)
        counts = torch.bincount(drawn, minlength=vocab).tolist()
        assert _chi_square_p(counts, (exact * n).tolist()) > 1e-3, (vocab, temperature, top_p)


def test_the_engine_and_the_previous_sampler_draw_the_first_token_from_the_same_distribution(loaded, monkeypatch):
    """3,000 first tokens of one prompt from the engine, and 3,000 from sampling/reference.py (the
    previous loop, another way of spending the generators), against the model's exact next-token
    distribution at T 0.8, top-p 0.95."""
    import torch

    from chainforge.sampling import generate, render_prompt
    from chainforge.sampling.hf import SAMPLER_ENV

    model, tok = loaded
    prompt = "What is 12 + 7?"
    ids = tok(render_prompt(tok, prompt), add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    n = 3_000
    expected = (_exact(logits, 0.8, 0.95) * n).tolist()
    for sampler in ("engine", "reference"):
        monkeypatch.setenv(SAMPLER_ENV, sampler)
        out = generate(model, tok, [prompt], n=n, temperature=0.8, top_p=0.95, max_new_tokens=1, seed=5,
                       batch_size=512)
        counts = [0] * len(expected)
        for c in out[0]:
            counts[c.ids[0]] += 1
        p = _chi_square_p(counts, expected)
        assert p > 1e-3, (sampler, p)
    assert not math.isnan(p)
