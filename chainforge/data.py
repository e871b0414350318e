"""Data in and results out: load any input, check columns, and the output folder's life cycle.

The life cycle (../shared/CONTRACT.md, "What every stage writes"):

    plan = plan_output(opts.output, "sft", opts, overwrite=opts.overwrite)   # validates only
    ... validate data and model ...
    out = plan.create(inputs=[...])      # makes the folder, manifest status: running
    ... work; working files under fixed names in out.path ...
    out.save_dataset(ds) / out.save_checkpoint(model, tok)   # temp name, then renamed in
    out.finish(metrics)                  # manifest last, status: complete

Nothing is created at `--output` until `create()`; a manifest says `complete` only after every
result file is in place.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from chainforge import __version__
from chainforge.config import config_differences
from chainforge.errors import UsageError

MANIFEST = "chainforge.json"
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


# ---- reading ------------------------------------------------------------------------------------

def load_rows(path: str | os.PathLike, limit: Optional[int] = None, what: str = "--data"):
    """Load a dataset from a save_to_disk folder or a .jsonl/.json/.csv/.parquet file."""
    import datasets

    p = Path(path)
    if not p.exists():
        raise UsageError(f"{what} not found: {p} (give a save_to_disk folder or a "
                         f"{'/'.join(DATA_SUFFIXES)} file)")
    try:
        if p.is_dir():
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if "train" not in ds:
                    raise UsageError(f"{what} {p} holds splits {sorted(ds)}; point at one split's folder")
                ds = ds["train"]
        elif p.suffix == ".jsonl" or p.suffix == ".json":
            ds = _load_json(p)
        elif p.suffix == ".csv":
            ds = datasets.Dataset.from_csv(str(p), keep_in_memory=True)
        elif p.suffix == ".parquet":
            ds = datasets.Dataset.from_parquet(str(p), keep_in_memory=True)
        else:
            raise UsageError(f"{what} {p}: unsupported file type '{p.suffix}' "
                             f"(use a save_to_disk folder or {'/'.join(DATA_SUFFIXES)})")
    except UsageError:
        raise
    except FileNotFoundError as exc:
        raise UsageError(f"{what} {p} is not a dataset folder ({exc}); give a save_to_disk folder "
                         f"or a data file") from None
    except Exception as exc:  # datasets raises many types for unreadable files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot read {what} {p}: {first}") from None
    if len(ds) == 0:
        raise UsageError(f"{what} {p} is empty: it needs at least one row")
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ds


def _load_json(p: Path):
    """JSON Lines, or a JSON list of objects (or {"data": [...]}) — read directly, no cache dir."""
    import datasets

    text = p.read_text(encoding="utf-8")
    rows: list[dict]
    stripped = text.lstrip()
    if p.suffix == ".json" and stripped.startswith(("[", "{")):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, list):
            rows = obj
        elif isinstance(obj, dict) and isinstance(obj.get("data"), list):
            rows = obj["data"]
        else:
            rows = _json_lines(text, p)
    else:
        rows = _json_lines(text, p)
    if not all(isinstance(r, dict) for r in rows):
        raise UsageError(f"{p}: every record must be a JSON object")
    return datasets.Dataset.from_list(rows)


def _json_lines(text: str, p: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UsageError(f"{p} line {n} is not valid JSON ({exc.msg}); fix or remove that line") from None
    return rows


def require_columns(ds, columns: Iterable[str], what: str = "--data") -> None:
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise UsageError(
            f"{what} has no column {', '.join(repr(c) for c in missing)}; columns found: "
            f"{', '.join(ds.column_names)} (rename it or pass --prompt-column/--answer-column)"
        )


def answer_column(ds, requested: str, required: bool, what: str = "--data") -> Optional[str]:
    """The reference-answer column: `requested`, else `reference` (a collect output), else None."""
    if requested in ds.column_names:
        return requested
    if requested == "answer" and "reference" in ds.column_names:
        return "reference"
    if required:
        raise UsageError(
            f"{what} has no answer column '{requested}' (nor 'reference'); columns found: "
            f"{', '.join(ds.column_names)} (pass --answer-column NAME)"
        )
    return None


def load_prompt_rows(path, prompt_column: str, answer_column_name: Optional[str] = None, *,
                     answer_required: bool = False, limit: Optional[int] = None, what: str = "--data"):
    """Load prompt rows and check them before anything is created: the prompt column holds
    non-empty strings or lists of {role, content} messages, the answer column (see
    `answer_column`; None when absent and not required) strings or numbers. Returns (dataset,
    answer column). A bad value is exit 2 naming the column and the first bad row."""
    ds = load_rows(path, limit, what=what)
    require_columns(ds, [prompt_column], what=what)
    answers = answer_column(ds, answer_column_name, required=answer_required, what=what) \
        if answer_column_name else None
    for i, p in enumerate(ds[prompt_column]):
        if not _valid_prompt(p):
            raise UsageError(f"{what} row {i}: column '{prompt_column}' must be a non-empty string or a list of "
                             f"{{role, content}} messages, got {str(p)[:60]!r}; fix or drop that row")
    if answers:
        for i, a in enumerate(ds[answers]):
            if a is not None and (isinstance(a, bool) or not isinstance(a, (str, int, float))):
                raise UsageError(f"{what} row {i}: column '{answers}' must hold the reference answer as a string "
                                 f"or number, got {type(a).__name__} {str(a)[:60]!r}; fix or drop that row")
    return ds, answers


def _valid_prompt(p) -> bool:
    if isinstance(p, str):
        return bool(p.strip())
    return (isinstance(p, list) and bool(p)
            and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in p))


def read_manifest(folder: str | os.PathLike) -> Optional[dict]:
    p = Path(folder) / MANIFEST
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def input_record(path: str | os.PathLike) -> dict:
    """How a manifest names one input: its path and, if it is a ChainForge output, its fingerprint."""
    m = read_manifest(path) if Path(path).is_dir() else None
    rec = {"path": str(path)}
    if m:
        rec.update(stage=m.get("stage"), fingerprint=m.get("fingerprint"), status=m.get("status"))
    return rec


# ---- writing ------------------------------------------------------------------------------------

def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fingerprint(manifest: dict) -> str:
    body = {k: manifest.get(k) for k in ("stage", "config", "inputs", "metrics", "created")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class OutputPlan:
    """A validated `--output`: nothing exists on disk yet (or it is a resumable run)."""

    path: Path
    stage: str
    config: dict
    mode: str  # "new", "resume" or "overwrite"
    previous: Optional[dict] = None

    @property
    def resuming(self) -> bool:
        return self.mode == "resume"

    def create(self, inputs: Iterable[str | os.PathLike] = ()) -> "StageOutput":
        if self.mode == "overwrite" and self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        created = (self.previous or {}).get("created") if self.resuming else None
        out = StageOutput(self.path, self.stage, self.config,
                          [input_record(i) for i in inputs],
                          created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        out.write_manifest("running", (self.previous or {}).get("metrics", {}) if self.resuming else {})
        return out


def plan_output(path: Optional[str], stage: str, config: dict, overwrite: bool = False,
                ignore: Iterable[str] = (), allow_complete: bool = False) -> OutputPlan:
    """Decide what to do with `--output` before anything is created (exit 2 on a conflict).

    `ignore`: options that may change between a run and its resumption (concurrency, say).
    `allow_complete`: the stage itself knows what to do with a complete output (collect's
    --retry-failed); otherwise a complete output needs --overwrite.
    """
    if not path:
        raise UsageError("missing --output: give the folder to write to")
    p = Path(path)
    redacted = config.redacted() if hasattr(config, "redacted") else dict(config)
    if p.exists() and not p.is_dir():
        raise UsageError(f"--output {p} exists and is not a folder; choose another path")
    if not p.exists() or not any(p.iterdir()):
        return OutputPlan(p, stage, redacted, "new")
    if overwrite:
        return OutputPlan(p, stage, redacted, "overwrite")
    previous = read_manifest(p)
    if previous is None or previous.get("stage") != stage:
        what = f"a '{previous.get('stage')}' output" if previous else "not a ChainForge output"
        raise UsageError(f"--output {p} is not empty ({what}); choose an empty folder or pass --overwrite")
    status = previous.get("status")
    if status == "complete" and not allow_complete:
        raise UsageError(f"--output {p} already holds a complete {stage} output; pass --overwrite to redo it")
    diff = config_differences(previous.get("config", {}), redacted, ignore)
    if diff:
        shown = ", ".join(f"{k} (was {previous.get('config', {}).get(k)!r}, now {redacted.get(k)!r})"
                          for k in diff)
        raise UsageError(f"--output {p} holds an unfinished {stage} run with other options: {shown}; "
                         f"rerun with the same options or pass --overwrite")
    return OutputPlan(p, stage, redacted, "resume", previous)


@dataclass
class StageOutput:
    path: Path
    stage: str
    config: dict
    inputs: list = field(default_factory=list)
    created: str = ""

    def manifest(self, status: str, metrics: dict) -> dict:
        m = {
            "stage": self.stage,
            "chainforge_version": __version__,
            "created": self.created,
            "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "config": self.config,
            "inputs": self.inputs,
            "metrics": metrics,
            "status": status,
        }
        m["fingerprint"] = _fingerprint(m)
        return m

    def write_manifest(self, status: str, metrics: Optional[dict] = None) -> None:
        atomic_write_text(self.path / MANIFEST,
                          json.dumps(self.manifest(status, metrics or {}), indent=2, default=str) + "\n")

    def finish(self, metrics: dict) -> None:
        """The last write of a stage: the manifest says complete."""
        self.write_manifest("complete", metrics)

    def mark_incomplete(self, metrics: Optional[dict] = None) -> None:
        self.write_manifest("incomplete", metrics)

    def _move_in(self, tmp: Path, last: Iterable[str] = ()) -> None:
        """Rename every file of `tmp` into the output folder; the `last` names go in last."""
        last = list(last)
        names = sorted(n for n in os.listdir(tmp) if n not in last) + [n for n in last if (tmp / n).exists()]
        for name in names:
            dest = self.path / name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            os.replace(tmp / name, dest)
        shutil.rmtree(tmp, ignore_errors=True)

    def save_dataset(self, ds) -> None:
        """Write the result dataset so that `load_from_disk(self.path)` loads it."""
        tmp = self.path / ".partial-dataset"
        shutil.rmtree(tmp, ignore_errors=True)
        ds.save_to_disk(str(tmp))
        # state.json is what load_from_disk reads first: it goes in last.
        self._move_in(tmp, last=["dataset_info.json", "state.json"])

    def save_checkpoint(self, model, tokenizer=None) -> None:
        """Write a checkpoint so that `from_pretrained(self.path)` loads it."""
        tmp = self.path / ".partial-checkpoint"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        self._move_in(tmp, last=["config.json"])


def output_kind(folder: str | os.PathLike) -> Optional[str]:
    """'dataset', 'checkpoint' or None: what a finished output folder holds."""
    p = Path(folder)
    if (p / "state.json").is_file() and (p / "dataset_info.json").is_file():
        return "dataset"
    if (p / "config.json").is_file():
        return "checkpoint"
    return None
