"""The toy task shipped in data/toy: arithmetic problems with exact answers, train/test split.

    python scripts/make_toy_task.py                     # writes data/toy/train.jsonl + test.jsonl
    python scripts/make_toy_task.py --digits 2 --terms 3 --train 1000 --test 200 --out data/toy-hard

Columns: `id`, `prompt`, `answer` (what every ChainForge stage reads). Difficulty is `--digits`
(digits per operand) and `--terms` (operands per problem); `--ops` picks the operators. The
default, one-digit a + b and a - b, has exactly 200 distinct problems: 150 train and 50 test,
disjoint. When the pool is smaller than --train + --test the script says so and stops, rather
than repeating problems or leaking test problems into train. Fixed seed: rerunning gives the same
files.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from pathlib import Path

PROMPT = "What is {expr}? Put the final answer in \\boxed{{}}."


def problems(digits: int, terms: int, ops: list[str]) -> list[tuple[str, int]]:
    """Every distinct (expression, value) of the given shape, in a fixed order."""
    lo = 0 if digits == 1 else 10 ** (digits - 1)
    numbers = range(lo, 10 ** digits)
    out = []
    for operands in itertools.product(numbers, repeat=terms):
        for operators in itertools.product(ops, repeat=terms - 1):
            expr = str(operands[0])
            value = operands[0]
            for op, x in zip(operators, operands[1:]):
                expr += f" {op} {x}"
                value = value + x if op == "+" else value - x
            out.append((expr, value))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--digits", type=int, default=1, help="digits per operand (difficulty)")
    ap.add_argument("--terms", type=int, default=2, help="operands per problem (difficulty)")
    ap.add_argument("--ops", default="+,-", help="comma-separated operators from + and -")
    ap.add_argument("--train", type=int, default=150)
    ap.add_argument("--test", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="data/toy")
    args = ap.parse_args()
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    if not ops or any(o not in "+-" for o in ops) or args.digits < 1 or args.terms < 2:
        ap.error("--ops must use + and/or -, --digits >= 1, --terms >= 2")

    rng = random.Random(args.seed)
    # Sampling from a pool of 10^(digits*terms) problems: enumerate small pools, draw from big ones.
    size = (10 ** args.digits - (0 if args.digits == 1 else 10 ** (args.digits - 1))) ** args.terms * len(ops) ** (args.terms - 1)
    need = args.train + args.test
    if size < need:
        ap.error(f"only {size} distinct problems of this shape; ask for fewer or raise --digits/--terms")
    if size <= 200_000:
        pool = problems(args.digits, args.terms, ops)
        rng.shuffle(pool)
        chosen = pool[:need]
    else:
        seen, chosen = set(), []
        lo = 0 if args.digits == 1 else 10 ** (args.digits - 1)
        while len(chosen) < need:
            xs = [rng.randrange(lo, 10 ** args.digits) for _ in range(args.terms)]
            expr, value = str(xs[0]), xs[0]
            for x in xs[1:]:
                op = rng.choice(ops)
                expr += f" {op} {x}"
                value = value + x if op == "+" else value - x
            if expr not in seen:
                seen.add(expr)
                chosen.append((expr, value))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in (("test", chosen[:args.test]), ("train", chosen[args.test:])):
        path = out / f"{split}.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for i, (expr, value) in enumerate(rows):
                fh.write(json.dumps({"id": f"{split}-{i:04d}", "prompt": PROMPT.format(expr=expr),
                                     "answer": str(value)}) + "\n")
        print(f"wrote {len(rows)} problems to {path}")


if __name__ == "__main__":
    main()
