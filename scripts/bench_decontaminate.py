"""Benchmark: `chainforge decontaminate` on 100k training prompts against 5k eval prompts.

    PYTHONPATH=. python scripts/bench_decontaminate.py
    PYTHONPATH=. python scripts/bench_decontaminate.py --train 1000000 --eval 20000 --ngram 13

Synthetic, seeded prompts of 20-60 words (math word problems: a Zipf-distributed vocabulary, so
common words and stock phrases repeat across prompts the way they do in real sets, plus numbers).
2 % of the eval prompts are short (4-6 words, below the 8-word n-gram) to exercise the compare-whole
path. 1 % of the training prompts are planted copies of eval prompts: half exact, half near copies
(a sentence added in front, case changed, one word replaced). The script writes both sets as
.jsonl into a temporary folder, times the whole stage (`run(DecontaminateConfig(...))`: reading,
matching, writing the kept dataset, removed.jsonl and the manifest) and, separately, the matching
alone, and prints rows/s, the share of the one-minute goal used, and how many planted copies were
caught (all of them, or the run is not a valid measurement).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

GOAL_S = 60.0  # 100k training prompts against 5k eval prompts within a minute on 2 cores


def make_vocabulary(rng: random.Random, size: int) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = {"".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(size * 2)}
    return sorted(words)[:size]


def make_prompt(rng: random.Random, vocab: list[str], cum_weights: list[float], words: int) -> str:
    out = rng.choices(vocab, cum_weights=cum_weights, k=words)
    for i in range(words):
        if rng.random() < 0.08:
            out[i] = str(rng.randint(2, 9999))
    text = " ".join(out)
    return text[0].upper() + text[1:] + "?"


def make_sets(n_train: int, n_eval: int, seed: int):
    rng = random.Random(seed)
    vocab = make_vocabulary(rng, 5000)
    weights = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(vocab))))  # Zipf
    evals = []
    for i in range(n_eval):
        length = rng.randint(4, 6) if i % 50 == 0 else rng.randint(20, 60)
        evals.append(make_prompt(rng, vocab, weights, length))
    train, planted = [], set()
    for i in range(n_train):
        if i % 100 == 0:  # plant a copy of an eval prompt
            source = rng.choice([e for e in rng.sample(evals, 5) if len(e.split()) >= 20] or evals[1:2])
            if i % 200 == 0:
                prompt = source
            else:
                words = source.split()
                words[rng.randrange(len(words) // 2)] = "changed"
                prompt = "Answer the following. " + " ".join(words).upper()
            planted.add(i)
        else:
            prompt = make_prompt(rng, vocab, weights, rng.randint(20, 60))
        train.append(prompt)
    return train, evals, planted


def write_jsonl(path: Path, prompts: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i, p in enumerate(prompts):
            f.write(json.dumps({"id": f"{path.stem}-{i}", "prompt": p, "answer": "0"}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=100_000)
    ap.add_argument("--eval", type=int, default=5_000)
    ap.add_argument("--ngram", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from chainforge.decontam import build_index, find_matches
    from chainforge.stages.decontaminate import REMOVED, DecontaminateConfig, run

    t0 = time.perf_counter()
    train, evals, planted = make_sets(args.train, args.eval, args.seed)
    print(f"made {len(train)} training / {len(evals)} eval prompts in {time.perf_counter() - t0:.1f} s "
          f"(mean {sum(len(p.split()) for p in train) / len(train):.1f} words per training prompt; "
          f"{len(planted)} planted copies); cpus available: {len(os.sched_getaffinity(0))}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_jsonl(tmp / "train.jsonl", train)
        write_jsonl(tmp / "eval.jsonl", evals)

        t0 = time.perf_counter()
        run(DecontaminateConfig(data=str(tmp / "train.jsonl"), against=[str(tmp / "eval.jsonl")],
                                output=str(tmp / "out"), ngram=args.ngram))
        stage_s = time.perf_counter() - t0
        removed = {json.loads(line)["index"] for line in (tmp / "out" / REMOVED).open(encoding="utf-8")}

    t0 = time.perf_counter()
    index = build_index([evals], args.ngram)
    matched = find_matches(train, index)
    match_s = time.perf_counter() - t0

    caught = len(planted & removed)
    print(f"stage (read + match + write): {stage_s:.2f} s wall, {len(train) / stage_s:,.0f} training rows/s, "
          f"{stage_s / GOAL_S:.1%} of the {GOAL_S:.0f} s goal")
    print(f"matching alone (index + normalise + look up): {match_s:.2f} s, {len(train) / match_s:,.0f} rows/s "
          f"({match_s / stage_s:.0%} of the stage)")
    print(f"removed {len(removed)} rows; planted copies caught: {caught}/{len(planted)}; "
          f"other rows removed: {len(removed - planted)}; matcher agrees with the stage: "
          f"{removed == {i for i, m in enumerate(matched) if m is not None}}")
    if caught != len(planted):
        sys.exit("not every planted copy was caught: the measurement is not valid")


if __name__ == "__main__":
    main()
