"""`chainforge decontaminate`: drop training rows whose prompt overlaps an eval prompt.

    chainforge decontaminate --data data/toy/train.jsonl --against data/toy/test.jsonl --output runs/clean
    chainforge decontaminate --data train/ --prompt-column problem -o OUT --ngram 13 \\
        --against HuggingFaceH4/MATH-500:column=problem \\
        --against openai/gsm8k:subset=main:split=test:column=question

A training row is removed when its prompt shares a run of `--ngram` consecutive words (default 8,
open-r1's choice) with any prompt of any `--against` set, after lower-casing and dropping
punctuation; eval prompts shorter than that are compared whole. The rules, and why, are in
`chainforge.decontam`. Each `--against` set is `PATH[:column=NAME][:subset=NAME][:split=NAME]`:
its own prompt column (default: `--prompt-column`), subset and split (default: as for --data, the
`train` split when there is one — so name the split you evaluate on). `--prompt-column`,
`--subset` and `--split` otherwise apply to `--data`. Chat-message prompts are compared by their
user turns.

The output folder holds the kept rows (every column, unchanged) as a dataset that
`datasets.load_from_disk(OUT)` loads, `removed.jsonl` (one line per removed row: its `index` and
`id`, its `prompt`, the `eval_file` (the `--against` value as given), `eval_index` and `eval_id` it
matched, and the shared `ngram`), and the manifest with `rows`, `kept`, `removed`, `ngram` and
`removed_by_eval` (removed rows per `--against` value; a row matching several sets counts for the
first one given). The whole pass takes seconds (scripts/bench_decontaminate.py), so an interrupted
run simply redoes it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from chainforge.config import DataOptions, OutputOptions, StageSpec, default, option
from chainforge.decontam import EVAL_SET_FORM, EvalIndex, EvalSet, normalise, parse_eval_set, prompt_text
from chainforge.inputs import load_rows, require_columns
from chainforge.outputs import atomic_write_text, plan_output
from chainforge.errors import RunFailed, UsageError
from chainforge.log import info
from chainforge.sampling import row_id

STAGE = "decontaminate"
REMOVED = "removed.jsonl"


@dataclass(kw_only=True)
class DecontaminateConfig(DataOptions, OutputOptions):
    REQUIRED = ("data", "output")

    data: Optional[str] = default(
        DataOptions, "data", None, "Training set to clean: a file, a save_to_disk folder, a dataset repository "
                                   "folder or a hub id.")
    prompt_column: str = default(DataOptions, "prompt_column", "prompt",
                                 "Column holding the prompt, in --data and in every --against set that names "
                                 "no column.")
    against: list[str] = option(
        [], f"Eval set whose prompts must not appear in training, as {EVAL_SET_FORM} (a file, a folder or a hub "
            "id; its own prompt column, subset and split, e.g. openai/gsm8k:subset=main:split=test:column=question; "
            "an unnamed split is train when there is one). Repeat for several.")
    ngram: int = option(8, "Words in a shared run that marks a training prompt as contaminated (shorter eval "
                           "prompts are compared whole).", min=1)

    def check(self) -> None:
        super().check()
        if not self.against:
            raise UsageError("missing --against: give one or more eval sets whose prompts must not be "
                             "trained on (e.g. --against data/toy/test.jsonl)")
        sets = self.eval_sets()
        keys = [self._source(s.path, s.subset, s.split) + (s.column or self.prompt_column,) for s in sets]
        repeated = [s.given for s, key in zip(sets, keys) if keys.count(key) > 1]
        if repeated:
            raise UsageError(f"--against {repeated[0]} is given more than once; list each eval set once")
        data = self._source(self.data, self.subset, self.split) if self.data else None
        for s in sets:
            if self._source(s.path, s.subset, s.split) == data:
                raise UsageError(f"--against {s.given} is the --data set itself: every row would be removed; "
                                 f"give the eval sets to check against (or another :split=NAME of it)")
        if not self.prompt_column:
            raise UsageError("--prompt-column must be a column name, got an empty value")

    def eval_sets(self) -> list[EvalSet]:
        """The --against values, parsed (a malformed one is exit 2 showing the form)."""
        return [parse_eval_set(value) for value in self.against]

    @staticmethod
    def _source(path: str, subset: Optional[str], split: Optional[str]) -> tuple:
        # the same rows: the same file, folder or hub id, subset and split
        where = Path(path).expanduser()
        return (str(where.resolve()) if where.exists() else path, subset, split)


CONFIG = DecontaminateConfig
# In a recipe its kept rows replace the recipe's `prompts` for the stages after it.
SPEC = StageSpec("decontaminate", produces="prompts", inputs={"data": "prompts", "against": "eval_data"})


def run(config: DecontaminateConfig) -> None:
    # ---- options and paths (validated before anything is created)
    plan = plan_output(config.output, STAGE, config, overwrite=config.overwrite)

    # ---- data
    ds = load_rows(config.data, config.limit, split=config.split, subset=config.subset)
    require_columns(ds, [config.prompt_column])
    train_prompts = ds[config.prompt_column][:]  # a list: datasets returns a lazy Column
    train_words = [normalise(t) for t in _texts(train_prompts, f"--data {config.data}", config.prompt_column)]
    index = EvalIndex(config.ngram)
    eval_rows: list[tuple[list, Optional[list]]] = []  # (prompts, id column) per set, for removed.jsonl
    sets = config.eval_sets()
    for f, eval_set in enumerate(sets):
        what = f"--against {eval_set.given}"
        column = eval_set.column or config.prompt_column
        try:
            eval_ds = load_rows(eval_set.path, what="--against", split=eval_set.split, subset=eval_set.subset)
        except UsageError as exc:
            raise UsageError(_set_settings(exc.message, eval_set.path)) from None
        if column not in eval_ds.column_names:
            raise UsageError(f"{what} has no column '{column}'; columns found: {', '.join(eval_ds.column_names)} "
                             f"(name the prompt column: --against {eval_set.path}:column=NAME)")
        prompts = eval_ds[column][:]
        for r, text in enumerate(_texts(prompts, what, column)):
            index.add(f, r, normalise(text))
        eval_rows.append((prompts, _id_column(eval_ds)))

    # ---- match
    out = plan.create(inputs=[config.data, *(s.path for s in sets)])
    info(f"decontaminate: {len(ds)} training prompts against {index.prompts} eval prompts in "
         f"{len(sets)} set(s), {config.ngram}-word overlap"
         + (f"; {index.short} eval prompts shorter than {config.ngram} words are compared whole"
            if index.short else ""))
    train_given = _id_column(ds)
    kept: list[int] = []
    removed: list[dict] = []
    by_file = [0] * len(config.against)
    for i, words in enumerate(train_words):
        match = index.first_match(words)
        if match is None:
            kept.append(i)
            continue
        by_file[match.file] += 1
        eval_prompts, eval_given = eval_rows[match.file]
        removed.append({"index": i, "id": _row_id(train_given, train_prompts, i), "prompt": train_prompts[i],
                        "eval_file": config.against[match.file], "eval_index": match.row,
                        "eval_id": _row_id(eval_given, eval_prompts, match.row), "ngram": match.ngram})

    # ---- write
    atomic_write_text(out.path / REMOVED, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n"
                                                  for r in removed))
    metrics = {
        "rows": len(ds),
        "kept": len(kept),
        "removed": len(removed),
        "ngram": config.ngram,
        "removed_by_eval": dict(zip(config.against, by_file)),
    }
    if not kept:
        out.mark_incomplete(metrics)
        raise RunFailed(f"every one of the {len(ds)} rows of --data overlaps an --against prompt, so nothing is "
                        f"left to write (see {out.path / REMOVED}); check that --against holds eval sets, "
                        f"not the training set, or raise --ngram")
    out.save_dataset(ds.select(kept))
    out.finish(metrics)
    counts = ", ".join(f"{n} by {p}" for p, n in metrics["removed_by_eval"].items())
    info(f"decontaminate: kept {len(kept)} of {len(ds)} rows, removed {len(removed)} ({counts}) -> {out.path}")


def _texts(prompts: list, what: str, column: str) -> list[str]:
    texts = []
    for i, prompt in enumerate(prompts):
        try:
            texts.append(prompt_text(prompt))
        except ValueError as exc:
            fix = "name its column as PATH:column=NAME" if what.startswith("--against") else "pass --prompt-column NAME"
            raise UsageError(f"{what}: row {i} of column '{column}' is not a prompt ({exc}); fix the row "
                             f"or {fix}") from None
    return texts



def _set_settings(message: str, path: str) -> str:
    """The loader's advice about --split/--subset, said as an eval set's own settings
    (`--against PATH:split=NAME`): for --against those flags would name --data's."""
    message = re.sub(r"\A--(split|subset) (\S+): ", r":\1=\2: ", message)
    message = re.sub(r"drop --(split|subset)\b", r"drop :\1=… from it", message)
    return re.sub(r"--(split|subset) NAME", lambda m: f"--against {path}:{m.group(1)}=NAME", message)


def _id_column(ds) -> Optional[list]:
    return ds["id"][:] if "id" in ds.column_names else None


def _row_id(given: Optional[list], prompts: list, i: int) -> str:
    """Row i's id the way every stage gives it: its `id` value, else a hash of its prompt."""
    return row_id(given[i] if given is not None else None, prompts[i])
