"""`chainforge reject`: rejection sampling — draw N candidates per question, keep the best that pass.

    chainforge reject --model runs/demo/02-rl --data data/toy/train.jsonl --output runs/reject
    chainforge reject --model M --data D -o OUT --num-samples 16 --rewards accuracy,format,expansion \\
        --min-reward 1.2 --keep all-passing

Stage 3 of the R1 recipe: the RL checkpoint answers every training question `--num-samples` times
(temperature 0.7, the Super CoT system prompt); each candidate is scored with the grpo reward
registry (`--rewards`, default accuracy+format); identical completions count once; candidates with
reward ≥ `--min-reward` (default 1.0, i.e. correct) pass; `--keep best` keeps the top one per
question, `--keep all-passing` every distinct passing one (`kept_rank` 0 = the best; ties go to the
one drawn first). Completions are kept exactly as generated, expansions and all.

The output is a dataset `chainforge sft` takes unchanged: `id`, `prompt`, `reference`, `text`,
`messages` ([user prompt, assistant text] — the system prompt used for sampling is not part of the
training conversation, so the model learns the format without being asked), `reward`,
`candidates`, `kept_rank`. Sampling is journaled in `candidates.jsonl`: an interrupted run resumes,
and when nothing passes (exit 1) the same command with another `--min-reward` or `--keep` reuses the
candidates already drawn.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from chainforge.config import Options
from chainforge.data import answer_column, load_rows, plan_output, require_columns
from chainforge.errors import RunFailed, UsageError
from chainforge.log import info
from chainforge.metrics import pass_at_k, score_rows
from chainforge.rewards import resolve_rewards
from chainforge.rewards import NEEDS_ANSWER
from chainforge.sampling import (as_messages, engine_spec, generate_journaled, load_engine, row_id,
                                 resolve_system_prompt)

REJECT_REWARDS = ("accuracy", "format")
KEEP = ("best", "all-passing")
JOURNAL = "candidates.jsonl"
# Rewards are sums of floats (0.7 + 0.2 + 0.1 is 0.9999999999999999): "≥ R" allows round-off.
_TOLERANCE = 1e-9


# Options that may change between a run and its resumption (chainforge run reads this too):
# the drawn candidates are kept, so a new filter reuses them.
RESUMABLE_CHANGES = ("min_reward", "keep", "batch_size")


def run(opts: Options) -> None:
    # ---- options
    opts.require("model", "data", "output")
    engine = engine_spec(opts)
    names, weights = resolve_rewards(opts.rewards, default=REJECT_REWARDS)
    if opts.keep not in KEEP:
        raise UsageError(f"--keep {opts.keep!r} is not one of {', '.join(KEEP)}")
    # Candidates don't depend on these: a rerun with another filter reuses the journal.
    plan = plan_output(opts.output, "reject", opts, overwrite=opts.overwrite,
                       ignore=RESUMABLE_CHANGES)

    # ---- data (validated before anything is created)
    ds = load_rows(opts.data, opts.limit)
    require_columns(ds, [opts.prompt_column])
    answers = answer_column(ds, opts.answer_column, required=False)
    needs = [n for n in names if n in NEEDS_ANSWER]
    if needs and answers is None:
        raise UsageError(f"--rewards {', '.join(needs)} needs reference answers but --data has no column "
                         f"'{opts.answer_column}' (nor 'reference'); columns found: {', '.join(ds.column_names)} "
                         f"(pass --answer-column NAME, or use rewards that need no answer, e.g. --rewards format)")
    rows = [dict(r) for r in ds]

    # ---- sample and score
    out = plan.create(inputs=[opts.data, opts.model])
    model, tokenizer = load_engine(engine)
    prompts = [r[opts.prompt_column] for r in rows]
    info(f"reject: {len(rows)} prompts x {opts.num_samples} candidates, temperature {opts.temperature}, "
         f"rewards {', '.join(f'{n}={w:g}' for n, w in zip(names, weights))}, min reward {opts.min_reward}")
    drawn = generate_journaled(
        out.path / JOURNAL, model, tokenizer, prompts, n=opts.num_samples, temperature=opts.temperature,
        top_p=opts.top_p, max_new_tokens=opts.max_new_tokens, seed=opts.seed, batch_size=engine.batch_size,
        system_prompt=resolve_system_prompt(opts.system_prompt), progress=True)
    texts = [[c.text for c in comps] for comps in drawn]
    refs = [r.get(answers) if answers else None for r in rows]
    rewards = score_rows(rows, texts, refs, names, weights)

    # ---- filter
    kept: list[dict] = []
    passing_counts = []
    for row, prompt, ref, cands, scores in zip(rows, prompts, refs, texts, rewards):
        passing_counts.append(sum(s >= opts.min_reward - _TOLERANCE for s in scores))
        for rank, (text, reward) in enumerate(select_candidates(cands, scores, opts.min_reward, opts.keep)):
            kept.append(_row(row, prompt, ref, text, reward, len(cands), rank))
    n = opts.num_samples
    all_scores = [s for scores in rewards for s in scores]
    metrics = {
        "prompts": len(rows),
        "candidates": len(all_scores),
        "kept": len(kept),
        "pass@1": sum(c / n for c in passing_counts) / len(rows),
        "pass@k": sum(pass_at_k(n, c, n) for c in passing_counts) / len(rows),
        "mean_reward_all": sum(all_scores) / len(all_scores),
        "mean_reward_kept": (sum(r["reward"] for r in kept) / len(kept)) if kept else None,
    }
    if not kept:
        out.mark_incomplete(metrics)
        raise RunFailed(f"no candidate reached --min-reward {opts.min_reward} (best reward "
                        f"{max(all_scores):.3g} over {len(all_scores)} candidates); nothing to keep. Rerun "
                        f"with a lower --min-reward (the candidates drawn are reused), or draw more with "
                        f"--num-samples / a longer --max-new-tokens after --overwrite")

    import datasets

    out.save_dataset(datasets.Dataset.from_list(kept))
    out.finish(metrics)
    info(f"reject: kept {len(kept)} of {len(all_scores)} candidates from {len(rows)} prompts "
         f"(pass@1 {metrics['pass@1']:.3f}, pass@{n} {metrics['pass@k']:.3f}) -> {out.path}")


def select_candidates(texts: Sequence[str], rewards: Sequence[float], min_reward: float,
                      keep: str = "best") -> list[tuple[str, float]]:
    """The kept (text, reward) of one question, best first.

    Identical completions count once; a candidate passes with reward ≥ min_reward; ties are broken
    by draw order. `best` keeps the first passing one, `all-passing` all of them."""
    seen: dict[str, tuple[int, float]] = {}
    for i, (text, reward) in enumerate(zip(texts, rewards)):
        if text not in seen:
            seen[text] = (i, reward)
    ranked = sorted(seen.items(), key=lambda item: (-item[1][1], item[1][0]))
    passing = [(text, reward) for text, (_, reward) in ranked if reward >= min_reward - _TOLERANCE]
    return passing[:1] if keep == "best" else passing


def _row(row: dict, prompt: Any, ref: Optional[Any], text: str, reward: float, candidates: int,
         rank: int) -> dict:
    user_turns = as_messages(prompt)
    return {
        "id": row_id(row.get("id"), prompt),
        "prompt": prompt,
        "reference": None if ref is None else str(ref),
        "text": text,
        "messages": user_turns + [{"role": "assistant", "content": text}],
        "reward": float(reward),
        "candidates": candidates,
        "kept_rank": rank,
    }
