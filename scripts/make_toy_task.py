"""The toy tasks shipped in data/: arithmetic problems with exact answers, train/test split.

    python scripts/make_toy_task.py                     # writes data/toy/train.jsonl + test.jsonl
    python scripts/make_toy_task.py --digits 2 --train 1000 --validation 200 --test 400 --reworded 200 \
        --traces --out data/toy-2digit

Columns: `id`, `prompt`, `answer` (what every ChainForge stage reads). Difficulty is `--digits`
(digits per operand) and `--terms` (operands per problem); `--ops` picks the operators. The
default, one-digit a + b and a - b, has exactly 200 distinct problems: 100 train and 100 test,
disjoint. When the pool is smaller than --train + --test the script says so and stops, rather
than repeating problems or leaking test problems into train. Fixed seed: rerunning gives the same
files.

`--validation N` carves N more problems out of the pool into `validation.jsonl`: disjoint from
train AND test, and absent from `sft.jsonl`, so that settings can be chosen on them without ever
looking at the test split. `--reworded N` writes `test-reworded.jsonl`: the first N test problems
asked in words the other files never use ("Add 23 and 45.", "What is the sum of …", "What is 71
minus 18?", "Subtract 18 from 71."), to see whether a checkpoint learned the sums or only the
training wording. It is a measurement, never training data.

`--traces` also writes `sft.jsonl`: one worked Super CoT solution per TRAIN problem (column
`messages`, what `chainforge sft` reads), column by column with carries and borrows. It is the
cold-start data of configs/learn.yaml: correct by construction and as balanced as the problems
themselves (about half additions, half subtractions, half of those negative). Cold SFT on what a
135M local teacher got right taught no subtraction at all (11 of 13 kept rows were additions).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
from pathlib import Path

PROMPT = "What is {expr}? Put the final answer in \\boxed{{}}."
# The wordings of test-reworded.jsonl (one per problem, in turn): none appears in train or test.
REWORDED = {
    "+": ["Add {a} and {b}. Give the final answer in \\boxed{{}}.",
          "What is the sum of {a} and {b}? Give the final answer in \\boxed{{}}."],
    "-": ["What is {a} minus {b}? Give the final answer in \\boxed{{}}.",
          "Subtract {b} from {a}. Give the final answer in \\boxed{{}}."],
}


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


def pool_size(digits: int, terms: int, ops: list[str]) -> int:
    per_operand = 10 ** digits - (0 if digits == 1 else 10 ** (digits - 1))
    return per_operand ** terms * len(ops) ** (terms - 1)


def make_split(digits: int, terms: int, ops: list[str], n_train: int, n_test: int, seed: int = 0,
               n_validation: int = 0) -> tuple[list[tuple[str, int]], list[tuple[str, int]], list[tuple[str, int]]]:
    """(train, test, validation): distinct problems, none in two splits. ValueError when the pool is
    too small. The test problems are drawn first, so adding a validation split changes train only."""
    rng = random.Random(seed)
    size, need = pool_size(digits, terms, ops), n_train + n_test + n_validation
    if size < need:
        raise ValueError(f"only {size} distinct problems of this shape; ask for fewer or raise --digits/--terms")
    # Sampling from a pool of 10^(digits*terms) problems: enumerate small pools, draw from big ones.
    if size <= 200_000:
        pool = problems(digits, terms, ops)
        rng.shuffle(pool)
        chosen = pool[:need]
    else:
        seen, chosen = set(), []
        lo = 0 if digits == 1 else 10 ** (digits - 1)
        while len(chosen) < need:
            xs = [rng.randrange(lo, 10 ** digits) for _ in range(terms)]
            expr, value = str(xs[0]), xs[0]
            for x in xs[1:]:
                op = rng.choice(ops)
                expr += f" {op} {x}"
                value = value + x if op == "+" else value - x
            if expr not in seen:
                seen.add(expr)
                chosen.append((expr, value))
    test, validation = chosen[:n_test], chosen[n_test:n_test + n_validation]
    train = chosen[n_test + n_validation:]
    check_disjoint(train, test, validation)
    return train, test, validation


def check_disjoint(*splits) -> None:
    """Refuse splits that share a problem (or a split that repeats one)."""
    seen: dict[str, int] = {}
    for i, split in enumerate(splits):
        exprs = [e for e, _ in split]
        if len(set(exprs)) != len(exprs):
            raise ValueError("a split repeats a problem")
        for e in exprs:
            if e in seen:
                raise ValueError(f"problem {e!r} is in two splits ({seen[e]} and {i})")
            seen[e] = i


def reworded(expr: str, i: int) -> str:
    """Problem `expr` ('a + b' / 'a - b') in the i-th wording of its operator (they alternate)."""
    a, op, b = expr.split()
    return REWORDED[op][i % len(REWORDED[op])].format(a=a, b=b)


def _column_steps(a: int, b: int, op: str) -> tuple[list[str], int]:
    """Column-by-column steps for a op b with a, b >= 0 and, for '-', a >= b."""
    steps, carry, digits, place = [], 0, [], 0
    names = ["ones", "tens", "hundreds", "thousands"]
    width = max(len(str(a)), len(str(b)))
    for place in range(width):
        x, y = a // 10 ** place % 10, b // 10 ** place % 10
        name = names[place] if place < len(names) else f"10^{place}"
        if op == "+":
            total = x + y + carry
            extra = f" + {carry}" if carry else ""
            note = f", write {total % 10} carry 1" if total >= 10 else ""
            steps.append(f"{name}: {x} + {y}{extra} = {total}{note}")
            digits.append(total % 10)
            carry = total // 10
        else:
            top = x - carry
            if top < y:
                steps.append(f"{name}: {x}{f' - {carry}' if carry else ''} < {y}, borrow: {top + 10} - {y} = {top + 10 - y}")
                digits.append(top + 10 - y)
                carry = 1
            else:
                steps.append(f"{name}: {x}{f' - {carry}' if carry else ''} - {y} = {top - y}")
                digits.append(top - y)
                carry = 0
    if op == "+" and carry:
        digits.append(carry)
    value = int("".join(str(d) for d in reversed(digits)))
    return steps, value


def worked_solution(expr: str, value: int) -> str:
    """A Super CoT solution of 'a + b' / 'a - b' (two terms), checked against `value`."""
    from chainforge.formats import write_super_cot

    a_s, op, b_s = expr.split()
    a, b = int(a_s), int(b_s)
    steps = []
    if op == "-" and a < b:
        steps.append(f"{b} is larger than {a}, so the result is negative: compute {b} - {a}")
        col, magnitude = _column_steps(b, a, "-")
        steps += col
        result = -magnitude
        steps.append(f"{b} - {a} = {magnitude}, so {expr} = {result}")
    else:
        col, result = _column_steps(a, b, op)
        steps += col
        steps.append(f"{expr} = {result}")
    if result != value:
        raise AssertionError(f"worked solution of {expr} gave {result}, expected {value}")
    return write_super_cot(steps, None, str(result))


def write_split(out: Path, train, test, traces: bool, validation=(), n_reworded: int = 0) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in (("test", test), ("validation", validation), ("train", train)):
        if split == "validation" and not rows:
            continue
        path = out / f"{split}.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for i, (expr, value) in enumerate(rows):
                fh.write(json.dumps({"id": f"{split}-{i:04d}", "prompt": PROMPT.format(expr=expr),
                                     "answer": str(value)}) + "\n")
        print(f"wrote {len(rows)} problems to {path}")
    if n_reworded:
        if n_reworded > len(test) or any(len(e.split()) != 3 for e, _ in test[:n_reworded]):
            raise ValueError("--reworded takes at most --test two-term problems")
        path = out / "test-reworded.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for i, (expr, value) in enumerate(test[:n_reworded]):
                # the same id as the test problem it rewords: the two evals can be paired
                fh.write(json.dumps({"id": f"test-{i:04d}", "prompt": reworded(expr, i // 2),
                                     "answer": str(value)}) + "\n")
        print(f"wrote {n_reworded} reworded test problems to {path}")
    if traces:
        path = out / "sft.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for i, (expr, value) in enumerate(train):
                prompt = PROMPT.format(expr=expr)
                fh.write(json.dumps({"id": f"train-{i:04d}", "messages": [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": worked_solution(expr, value)}]}) + "\n")
        adds = sum(" + " in e for e, _ in train)
        neg = sum(v < 0 for _, v in train)
        print(f"wrote {len(train)} worked solutions to {path} ({adds} additions, {len(train) - adds} "
              f"subtractions, {neg} negative answers)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--digits", type=int, default=1, help="digits per operand (difficulty)")
    ap.add_argument("--terms", type=int, default=2, help="operands per problem (difficulty)")
    ap.add_argument("--ops", default="+,-", help="comma-separated operators from + and -")
    ap.add_argument("--train", type=int, default=100)
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--validation", type=int, default=0,
                    help="also write validation.jsonl: problems in neither train, test nor sft.jsonl")
    ap.add_argument("--reworded", type=int, default=0,
                    help="also write test-reworded.jsonl: the first N test problems in other words")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--traces", action="store_true", help="also write sft.jsonl: worked Super CoT solutions "
                                                          "of the train problems (two-term problems only)")
    ap.add_argument("--out", default="data/toy")
    args = ap.parse_args(argv)
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    if not ops or any(o not in "+-" for o in ops) or args.digits < 1 or args.terms < 2:
        ap.error("--ops must use + and/or -, --digits >= 1, --terms >= 2")
    if args.traces and args.terms != 2:
        ap.error("--traces writes solutions of two-term problems only; drop it or use --terms 2")
    try:
        train, test, validation = make_split(args.digits, args.terms, ops, args.train, args.test, args.seed,
                                             args.validation)
        if args.reworded and (args.terms != 2 or args.reworded > args.test):
            raise ValueError("--reworded needs --terms 2 and at most --test problems")
    except ValueError as exc:
        ap.error(str(exc))
    write_split(Path(args.out), train, test, args.traces, validation, args.reworded)


if __name__ == "__main__":
    sys.exit(main())
