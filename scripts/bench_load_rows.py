"""How much slower a dataset repository folder loads than the same rows as one file.

    PYTHONPATH=. python scripts/bench_load_rows.py [--rows 1000 50000] [--repeats 3]

For each size it writes, in a temporary folder, the rows as one .jsonl file, as one .parquet file,
and as a hub-style repository (README `configs:` with subsets main/socratic, train/test parquet
shards), then times `load_rows` on each (best of --repeats, after one warm-up load) and prints the
repository's time over the file's: the price of going through `datasets.load_dataset` (module
resolution, conversion in a throw-away cache).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

README = """---
configs:
- config_name: main
  data_files:
  - split: train
    path: main/train-*
  - split: test
    path: main/test-*
- config_name: socratic
  data_files:
  - split: train
    path: socratic/train-*
  - split: test
    path: socratic/test-*
---
"""


def best_of(repeats: int, fn) -> float:
    fn()  # warm-up: imports and first-use set-up are not what is measured
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 50000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import datasets

    from chainforge.inputs import load_rows
    from chainforge.log import console

    console.quiet = True  # load_rows names the split it read; not wanted in a table
    datasets.disable_progress_bars()  # writing the inputs and reading the files would draw bars
    print(f"{'rows':>7}  {'jsonl s':>8}  {'parquet s':>9}  {'repo s':>8}  {'repo/jsonl':>10}  {'repo/parquet':>12}")
    for n in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            records = [{"question": f"What is {i} + {i % 7}? Show the steps.", "answer": f"#### {i + i % 7}"}
                       for i in range(n)]
            (root / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
            ds = datasets.Dataset.from_list(records)
            ds.to_parquet(str(root / "d.parquet"))
            repo = root / "repo"
            repo.mkdir()
            (repo / "README.md").write_text(README)
            for subset in ("main", "socratic"):
                (repo / subset).mkdir()
                ds.to_parquet(str(repo / subset / "train-00000-of-00001.parquet"))
                ds.select(range(min(n, 100))).to_parquet(str(repo / subset / "test-00000-of-00001.parquet"))
            jsonl = best_of(args.repeats, lambda: load_rows(root / "d.jsonl"))
            parquet = best_of(args.repeats, lambda: load_rows(root / "d.parquet"))
            repository = best_of(args.repeats, lambda: load_rows(repo, subset="main", split="train"))
            print(f"{n:>7}  {jsonl:>8.3f}  {parquet:>9.3f}  {repository:>8.3f}  {repository / jsonl:>10.2f}"
                  f"  {repository / parquet:>12.2f}")


if __name__ == "__main__":
    main()
