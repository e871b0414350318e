"""Scoring many completions per question: pass@k, majority vote, and `evaluate_model`, the eval
loop that `chainforge eval` runs and that other stages (distill's before/after check) call directly.

    metrics, results = evaluate_model(model, tokenizer, rows, num_samples=4, temperature=0.6)

`rows` are dicts (or a dataset) with `prompt`, `answer` and optionally `id`. `results` are the lines
of eval's `results.jsonl`, `metrics` the manifest metrics (../shared/CONTRACT.md):
`pass@1`, `pass@k`, `maj@k`, `format_rate`, `mean_completion_tokens`, `k`.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Sequence

from chainforge.formats import SUPER_COT_SYSTEM_PROMPT, answers_match, extract_final_answer, is_super_cot
from chainforge.rewards import parse_reward_spec, score
from chainforge.sampling import generate, generate_journaled, row_id

EVAL_REWARDS = ("accuracy", "format")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, "Evaluating Large
    Language Models Trained on Code", eq. 1): 1 - C(n-c, k) / C(n, k), computed as a product so
    large n doesn't overflow."""
    if n < 1 or not 0 <= c <= n:
        raise ValueError(f"need n >= 1 and 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def majority_vote(answers: Sequence[Optional[str]]) -> tuple[Optional[str], int]:
    """The most frequent answer and its count; (None, 0) when no completion gave one.

    Answers are grouped with `answers_match` (so "0.5" and "1/2" vote together); each group is
    named by its first member. Tie rule: among groups with the top count, the one whose first
    member came earliest wins — it depends only on sample order, never on the reference."""
    groups: list[list[Any]] = []  # [representative, count]
    for ans in answers:
        if ans is None or not str(ans).strip():
            continue
        for group in groups:
            if group[0] == ans or answers_match(group[0], ans) is True:
                group[1] += 1
                break
        else:
            groups.append([ans, 1])
    if not groups:
        return None, 0
    best = max(groups, key=lambda g: g[1])  # max keeps the first of equals: the earliest group
    return best[0], best[1]


def evaluate_model(model, tokenizer, rows: Iterable[dict], *, prompt_column: str = "prompt",
                   answer_column: Optional[str] = "answer", num_samples: int = 4, temperature: float = 0.6,
                   top_p: float = 0.95, max_new_tokens: int = 512, seed: int = 0,
                   system_prompt: Optional[str] = SUPER_COT_SYSTEM_PROMPT,
                   rewards: Any = EVAL_REWARDS, batch_size: Any = "auto", progress: bool = False,
                   journal: Optional[str] = None) -> tuple[dict, list[dict]]:
    """Sample `num_samples` completions per row and score them: (metrics, results).

    `temperature` 0 is greedy; every sample would be identical, so one is drawn and k is 1.
    A row without a reference (answer None) counts as not correct. `rewards` is a spec like
    "accuracy,format=0.5" or (names); `journal` makes the sampling resumable (see
    `sampling.generate_journaled`)."""
    rows = [dict(r) for r in rows]
    if not rows:
        raise ValueError("evaluate_model needs at least one row")
    k = 1 if temperature <= 0 else int(num_samples)
    if k < 1:
        raise ValueError("num_samples must be at least 1")
    if isinstance(rewards, tuple) and len(rewards) == 2 and isinstance(rewards[0], list):
        names, weights = rewards  # already parsed: (names, weights)
    else:
        names, weights = parse_reward_spec(rewards, default=EVAL_REWARDS)
    prompts = [r[prompt_column] for r in rows]
    kwargs = dict(n=k, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
                  batch_size=batch_size, system_prompt=system_prompt)
    if journal:
        drawn = generate_journaled(journal, model, tokenizer, prompts, progress=progress, **kwargs)
    else:
        drawn = generate(model, tokenizer, prompts, progress=progress, **kwargs)

    refs = [r.get(answer_column) if answer_column else None for r in rows]
    totals = score_rows(rows, [[c.text for c in comps] for comps in drawn], refs, names, weights)
    results, correct_counts, fmt, tokens = [], [], 0, 0
    for row, prompt, ref, comps, rewards_row in zip(rows, prompts, refs, drawn, totals):
        texts = [c.text for c in comps]
        finals = [extract_final_answer(t) for t in texts]
        correct = [answers_match(ref, f) is True for f in finals]
        majority, _ = majority_vote(finals)
        results.append({
            "id": row_id(row.get("id"), prompt),
            "prompt": prompt,
            "answer": None if ref is None else str(ref),
            "completions": texts,
            "rewards": rewards_row,
            "correct": correct,
            "pass_at_1": sum(correct) / k,
            "majority_answer": majority if majority is not None else "",
            "majority_correct": majority is not None and answers_match(ref, majority) is True,
        })
        correct_counts.append(sum(correct))
        fmt += sum(is_super_cot(t) for t in texts)
        tokens += sum(c.tokens for c in comps)
    q = len(rows)
    metrics = {
        "pass@1": sum(c / k for c in correct_counts) / q,
        "pass@k": sum(pass_at_k(k, c, k) for c in correct_counts) / q,
        "maj@k": sum(r["majority_correct"] for r in results) / q,
        "format_rate": fmt / (q * k),
        "mean_completion_tokens": tokens / (q * k),
        "k": k,
    }
    return metrics, results


def score_rows(rows: Sequence[dict], texts: Sequence[Sequence[str]], refs: Sequence[Any],
               names: Sequence[str], weights: Sequence[float]) -> list[list[float]]:
    """Total reward of every completion of every row, in one `rewards.score` call.

    Each row's columns go to the reward functions (repeated once per completion); the reference
    goes in as `answer`, whatever the column was called."""
    flat = [t for ts in texts for t in ts]
    if not flat:
        return [[] for _ in rows]
    columns: dict[str, list] = {}
    keys = {key for r in rows for key in r}
    for key in keys:
        columns[key] = [r.get(key) for r, ts in zip(rows, texts) for _ in ts]
    columns["answer"] = [ref for ref, ts in zip(refs, texts) for _ in ts]
    columns.pop("completions", None)
    columns["prompts"] = columns.pop("prompt", [None] * len(flat))
    totals, _ = score(flat, columns, names, weights)
    out, pos = [], 0
    for ts in texts:
        out.append(totals[pos:pos + len(ts)])
        pos += len(ts)
    return out


# Rewards are sums of floats (0.7 + 0.2 + 0.1 is 0.9999999999999999): "≥ R" allows round-off.
REWARD_TOLERANCE = 1e-9


def passes(reward: float, min_reward: float) -> bool:
    return reward >= min_reward - REWARD_TOLERANCE


def select_candidates(texts: Sequence[str], rewards: Sequence[float], min_reward: float,
                      keep: str = "best") -> list[tuple[str, float]]:
    """The kept (text, reward) of one question, best first (reject, and distill's trace filter).

    Identical completions count once; a candidate passes with reward ≥ min_reward; ties are broken
    by draw order. `best` keeps the first passing one, `all-passing` all of them."""
    seen: dict[str, tuple[int, float]] = {}
    for i, (text, reward) in enumerate(zip(texts, rewards)):
        if text not in seen:
            seen[text] = (i, reward)
    ranked = sorted(seen.items(), key=lambda item: (-item[1][1], item[1][0]))
    passing = [(text, reward) for text, (_, reward) in ranked if passes(reward, min_reward)]
    return passing[:1] if keep == "best" else passing
