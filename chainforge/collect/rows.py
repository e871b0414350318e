"""One collect row (the columns in docs/reference.md) and the dataset built from the journal."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional, Sequence

from chainforge.collect.journal import rows_in_order
from chainforge.providers.teachers import PromptItem, TeacherReply
from chainforge.formats import answers_match, write_super_cot

USAGE_FIELDS = ("prompt", "completion", "reasoning", "cache_hit")
COLUMNS = ("id", "prompt", "reference", "reasoning", "teacher_answer", "steps", "uncertain", "expansions",
           "text", "messages", "correct", "usage")


def features():
    from datasets import Features, List, Value

    tokens = {k: Value("int64") for k in USAGE_FIELDS}
    return Features({
        "id": Value("string"),
        "prompt": Value("string"),
        "reference": Value("string"),
        "reasoning": Value("string"),
        "teacher_answer": Value("string"),
        "steps": List(Value("string")),
        "uncertain": List(Value("bool")),
        "expansions": List(Value("string")),
        "text": Value("string"),
        "messages": List({"role": Value("string"), "content": Value("string")}),
        "correct": Value("bool"),
        "usage": {"teacher": tokens, "expander": dict(tokens), "cost_usd": Value("float64")},
    })


def build_row(item: PromptItem, reply: TeacherReply, steps: Sequence[str], uncertain: Sequence[bool],
              expansions: Sequence[Optional[str]], expander_usage: dict, cost_usd: float) -> dict:
    """A finished row. `steps` is non-empty and `reply.answer` non-empty (the teachers ensure it)."""
    text = write_super_cot(steps, expansions, reply.answer)
    return {
        "id": item.id,
        "prompt": item.prompt,
        "reference": item.reference,
        "reasoning": reply.reasoning,
        "teacher_answer": reply.answer,
        "steps": list(steps),
        "uncertain": list(uncertain),
        "expansions": list(expansions),
        "text": text,
        "messages": [{"role": "user", "content": item.prompt}, {"role": "assistant", "content": text}],
        "correct": answers_match(item.reference, reply.answer) if item.reference is not None else None,
        "usage": {"teacher": {k: int(reply.usage.get(k, 0)) for k in USAGE_FIELDS},
                  "expander": {k: int(expander_usage.get(k, 0)) for k in USAGE_FIELDS},
                  "cost_usd": round(cost_usd, 8)},
    }


def _dataset_rows(journal: Path, offsets: list[tuple[int, int]]) -> Iterator[dict]:
    for row in rows_in_order(journal, offsets):
        yield {c: row[c] for c in COLUMNS}


def build_dataset(journal: Path, offsets: list[tuple[int, int]], cache_dir: Path, batch: int = 1000):
    """The dataset of the given journal rows ((input index, byte offset) pairs), in input order.

    Streams the journal into an Arrow file in `cache_dir`, `batch` rows at a time, so memory stays
    flat. The rows go to Arrow by pyarrow's own conversion against the dataset's schema (its
    features): datasets' per-example encoding cost about 0.2 ms a row, as much as a request.
    """
    import datasets
    import pyarrow as pa
    from datasets import Dataset

    datasets.disable_progress_bars()  # collect has its own progress display (save_to_disk has a bar)
    schema = features().arrow_schema
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / "rows.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        chunk: list[dict] = []
        for row in _dataset_rows(journal, sorted(offsets)):
            chunk.append(row)
            if len(chunk) == batch:
                writer.write_batch(pa.RecordBatch.from_pylist(chunk, schema=schema))
                chunk = []
        if chunk or not offsets:
            writer.write_batch(pa.RecordBatch.from_pylist(chunk, schema=schema))
    return Dataset.from_file(str(path))
