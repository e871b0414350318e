"""Scoring many completions per question: pass@k, majority vote, and `evaluate_model`, the eval
loop that `chainforge eval` runs and that other stages (distill's before/after check) call directly.

    metrics, results = evaluate_model(model, tokenizer, rows, num_samples=4, temperature=0.6)

`rows` are dicts (or a dataset) with `prompt`, `answer` and optionally `id`. `results` are the lines
of eval's `results.jsonl`, `metrics` the manifest metrics (docs/reference.md):
`pass@1`, `pass@1_ci`, `pass@k`, `maj@k`, `format_rate`, `mean_completion_tokens`, `k`.

Intervals are percentile bootstraps over QUESTIONS (`bootstrap_ci`, and `paired_bootstrap_ci` for
the difference of two evals on the same questions), not Wilson intervals over samples: the k
samples of one question are not independent draws (a question the model cannot do fails on every
sample), so treating questions × samples as independent trials would make the interval too
narrow. Resampling whole questions keeps that correlation. A fixed seed makes the interval a pure
function of the results.
"""

from __future__ import annotations

import math
import random
from typing import Any, Iterable, Optional, Sequence

from chainforge.formats import (SUPER_COT_SYSTEM_PROMPT, answers_match, extract_final_answer, is_super_cot,
                                numeric_value)
from chainforge.rewards import parse_reward_spec, score
from chainforge.sampling import generate, generate_journaled, row_id

EVAL_REWARDS = ("accuracy", "format")
CI_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


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
        value = numeric_value(ans)
        for group in groups:
            # a number votes with equal numbers only: "6 - 5" must not join (and name) the group of 1
            rep_value = numeric_value(group[0])
            same = (value == rep_value) if value is not None or rep_value is not None \
                else answers_match(group[0], ans) is True
            if group[0] == ans or same:
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
                   journal: Optional[str] = None, reward_params: Optional[dict] = None) -> tuple[dict, list[dict]]:
    """Sample `num_samples` completions per row and score them: (metrics, results).

    `temperature` 0 is greedy; every sample would be identical, so one is drawn and k is 1.
    A row without a reference (answer None) counts as not correct. `rewards` is a spec like
    "accuracy,format=0.5" or (names), `reward_params` their options by name (`rewards.score`);
    `journal` makes the sampling resumable (see `sampling.generate_journaled`)."""
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
    totals = score_rows(rows, [[c.text for c in comps] for comps in drawn], refs, names, weights, prompts=prompts,
                        params=reward_params)
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
        "pass@1_ci": bootstrap_ci([c / k for c in correct_counts]),
        "pass@k": sum(pass_at_k(k, c, k) for c in correct_counts) / q,
        "maj@k": sum(r["majority_correct"] for r in results) / q,
        "format_rate": fmt / (q * k),
        "mean_completion_tokens": tokens / (q * k),
        "k": k,
    }
    return metrics, results


def score_rows(rows: Sequence[dict], texts: Sequence[Sequence[str]], refs: Sequence[Any],
               names: Sequence[str], weights: Sequence[float], prompts: Optional[Sequence[Any]] = None,
               params: Optional[dict] = None) -> list[list[float]]:
    """Total reward of every completion of every row, in one `rewards.score` call.

    Each row's columns go to the reward functions (repeated once per completion); the reference
    goes in as `answer` and the prompt as `prompts` (as TRL passes them), whatever the columns were
    called. `params`: the rewards' options by name."""
    flat = [t for ts in texts for t in ts]
    if not flat:
        return [[] for _ in rows]
    columns: dict[str, list] = {}
    keys = {key for r in rows for key in r}
    for key in keys:
        columns[key] = [r.get(key) for r, ts in zip(rows, texts) for _ in ts]
    columns["answer"] = [ref for ref, ts in zip(refs, texts) for _ in ts]
    columns.pop("completions", None)
    given = columns.pop("prompt", [None] * len(flat))
    columns["prompts"] = given if prompts is None else [p for p, ts in zip(prompts, texts) for _ in ts]
    totals, _ = score(flat, columns, names, weights, params)
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

# ---- intervals ----------------------------------------------------------------------------------

def _percentiles(stats: list[float], level: float) -> list[float]:
    stats = sorted(stats)
    tail = (1.0 - level) / 2
    # nearest-rank percentiles: the interval holds `level` of the resampled statistics
    lo = stats[max(0, math.ceil(tail * len(stats)) - 1)]
    hi = stats[min(len(stats) - 1, math.ceil((1.0 - tail) * len(stats)) - 1)]
    return [lo, hi]


def bootstrap_ci(values: Sequence[float], *, level: float = CI_LEVEL, resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = BOOTSTRAP_SEED) -> list[float]:
    """[low, high]: percentile bootstrap interval of the mean of `values` (one value per question,
    e.g. its pass@1), resampling questions with replacement."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("bootstrap_ci needs at least one value")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n, rng = len(values), random.Random(seed)
    means = [sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples)]
    return _percentiles(means, level)


def paired_bootstrap_ci(mine: Sequence[float], theirs: Sequence[float], **kwargs) -> list[float]:
    """[low, high] of mean(mine − theirs), the two lists holding the SAME questions in the same
    order: resampling question pairs removes the between-question variance that unpaired
    intervals carry (the hard questions are hard for both models)."""
    if len(mine) != len(theirs):
        raise ValueError(f"paired lists differ in length: {len(mine)} vs {len(theirs)}")
    return bootstrap_ci([a - b for a, b in zip(mine, theirs)], **kwargs)


def paired_by_id(mine: Sequence[dict], theirs: Sequence[dict], key: str = "pass_at_1"
                 ) -> tuple[list[float], list[float]]:
    """The `key` values of the questions (results lines, matched by `id`) that both evals hold."""
    other = {r.get("id"): r for r in theirs}
    shared = [r for r in mine if r.get("id") in other]
    return [float(r[key]) for r in shared], [float(other[r.get("id")][key]) for r in shared]


def compare_metrics(mine: Sequence[dict], theirs: Sequence[dict]) -> dict:
    """`delta_pass@1` (this − other, on the shared questions), its paired interval
    `delta_pass@1_ci`, and `compared_questions`. ValueError when no question is shared."""
    a, b = paired_by_id(mine, theirs)
    if not a:
        raise ValueError("the two evals share no question")
    return {"delta_pass@1": sum(a) / len(a) - sum(b) / len(b), "delta_pass@1_ci": paired_bootstrap_ci(a, b),
            "delta_pass@1_se": standard_error([x - y for x, y in zip(a, b)]), "compared_questions": len(a)}


def standard_error(values: Sequence[float]) -> Optional[float]:
    """Standard error of the mean of `values` (sample standard deviation / √n); None below 2 values."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def pooled_delta(runs: Sequence[tuple[Sequence[dict], Sequence[dict]]], *, level: float = CI_LEVEL,
                 resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    """The mean paired delta over several runs of one stage (seeds), each given as (its eval's
    results, its start's results), with a two-level percentile bootstrap interval: resample the runs,
    then the questions (the same question draw for every run, as they share the question set). The
    interval covers both the seed-to-seed spread and the question sampling; with 3 seeds it is a
    wide, honest one. Also: the per-run deltas, and the standard deviation between runs."""
    deltas = []
    for mine, theirs in runs:
        start = {r.get("id"): float(r["pass_at_1"]) for r in theirs}
        delta = {r.get("id"): float(r["pass_at_1"]) - start[r.get("id")] for r in mine if r.get("id") in start}
        if not delta:
            raise ValueError("a run shares no question with its start")
        deltas.append(delta)
    if not deltas:
        raise ValueError("pooled_delta needs at least one run")
    shared = sorted(set.intersection(*(set(d) for d in deltas)), key=str)
    if not shared:
        raise ValueError("the runs share no question")
    table = [[d[q] for q in shared] for d in deltas]
    per_run = [sum(row) / len(row) for row in table]
    mean = sum(per_run) / len(per_run)
    rng, n, k = random.Random(seed), len(shared), len(table)
    stats = []
    for _ in range(resamples):
        rows = [table[rng.randrange(k)] for _ in range(k)]
        picks = [rng.randrange(n) for _ in range(n)]
        stats.append(sum(row[q] for row in rows for q in picks) / (k * n))
    spread = math.sqrt(sum((d - mean) ** 2 for d in per_run) / (k - 1)) if k > 1 else None
    return {"delta_pass@1": mean, "delta_pass@1_ci": _percentiles(stats, level), "runs": k,
            "per_run": per_run, "between_runs_sd": spread, "compared_questions": n}


def verdict(delta_ci: Optional[Sequence[float]]) -> str:
    """'helped' / 'hurt' when the paired interval excludes 0, else 'no measurable change'."""
    if not delta_ci:
        return "–"
    lo, hi = delta_ci
    if lo > 0:
        return "helped"
    if hi < 0:
        return "hurt"
    return "no measurable change"


def format_interval(metrics: dict) -> str:
    """'[95% CI 0.41–0.55]' for pass@1, plus the paired delta when the metrics hold one."""
    parts = []
    ci = metrics.get("pass@1_ci")
    if ci:
        parts.append(f"[95% CI {ci[0]:.3f}–{ci[1]:.3f}]")
    if metrics.get("delta_pass@1") is not None:
        lo, hi = metrics["delta_pass@1_ci"]
        parts.append(f"(delta {metrics['delta_pass@1']:+.3f}, 95% CI {lo:+.3f}–{hi:+.3f} on "
                     f"{metrics.get('compared_questions')} shared questions: {verdict([lo, hi])})")
    return " ".join(parts)
