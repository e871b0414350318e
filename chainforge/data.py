"""Data in and results out: load any input, check columns, and the output folder's life cycle.

The life cycle (docs/reference.md, "What every stage writes"):

    plan = plan_output(opts.output, "sft", opts, overwrite=opts.overwrite)   # validates only
    ... validate data and model ...
    out = plan.create(inputs=[...])      # makes the folder, manifest status: running
    ... work; working files under fixed names in out.path ...
    out.save_dataset(ds) / out.save_checkpoint(model, tok)   # temp name, then renamed in
    out.finish(metrics)                  # manifest last, status: complete

Nothing is created at `--output` until `create()` (an existing output of the same kind is locked
at plan time, so a second process stops before it loads anything); a manifest says `complete` only
after every result file is in place. One process writes an output at a time: the lock
(`.chainforge.lock`, see `lock_output`) is held until the manifest's last write or process exit.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from chainforge import __version__, distributed
from chainforge.config import config_differences
from chainforge.errors import UsageError
from chainforge.log import info

MANIFEST = "chainforge.json"
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


# ---- reading ------------------------------------------------------------------------------------

# `owner/name`: how the hub spells a dataset id (checked only for paths that do not exist here).
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
# How deep data files make a plain folder a dataset repository: the folder and two levels below
# (hub layouts: train.jsonl, data/train.jsonl, main/test-*.parquet, data/main/train-*.parquet).
_REPOSITORY_DEPTH = 3


def load_rows(path: str | os.PathLike, limit: Optional[int] = None, what: str = "--data",
              split: Optional[str] = None, subset: Optional[str] = None):
    """Load the rows of `path`: a data file, a save_to_disk folder, a dataset repository folder or
    a hub dataset id.

    What `path` is taken to be, in this order:
    - an existing file: .jsonl/.json/.csv/.parquet, read whole (it has no splits or subsets);
    - an existing folder with save_to_disk files (`state.json`, or `dataset_dict.json` for a
      DatasetDict), or a ChainForge output folder: `datasets.load_from_disk`; a DatasetDict takes
      `split`;
    - any other existing folder that holds data files (.jsonl/.json/.csv/.parquet, in it or up to
      two folders down) or a README.md whose YAML header has `configs:`: a dataset repository laid out
      like one on the hub (`main/train-*.parquet`, `data/test.jsonl`, ...), read by
      `datasets.load_dataset` with `subset` (its config name) and `split`. A folder holding a
      model (`config.json`) is never taken for one;
    - `owner/name` that is not a local path: a hub dataset id, loaded by `datasets` through the
      Hugging Face cache (offline too, when it was loaded before);
    - anything else: exit 2.

    Split: `split` if given, else `train` when present, else the only split; several splits and
    none named is exit 2 listing them. Subset: `subset` if given, else the repository's default
    (a README config marked `default: true`, or its only one); several and none named is exit 2
    listing them. An unknown split or subset is exit 2 listing the available ones.

    A repository folder is converted in a temporary cache that is deleted once the rows are in
    memory: nothing is written into the folder, nor into the user's HF cache.
    """
    import datasets

    p = Path(path)
    if p.exists() and not p.is_dir():
        _refuse_split_or_subset(p, "a single file", what, split, subset)
    try:
        if p.is_dir() and _is_dataset_repository(p):
            ds = _load_repository(str(p), what, split, subset, local=True)
        elif p.is_dir():
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                _refuse_split_or_subset(p, "a saved DatasetDict", what, None, subset)
                ds = ds[_pick_split(list(ds), split, what, p)]
            else:
                _refuse_split_or_subset(p, "a saved dataset (one split)", what, split, subset)
        elif p.exists():
            ds = _load_file(p, what)
        elif _HUB_ID.fullmatch(str(path)) and p.suffix not in DATA_SUFFIXES:
            ds = _load_repository(str(path), what, split, subset, local=False)
        else:
            raise UsageError(f"{what} not found: {p} (give a save_to_disk folder, a "
                             f"{'/'.join(DATA_SUFFIXES)} file, a dataset repository folder or a hub "
                             f"dataset id such as openai/gsm8k)")
    except UsageError:
        raise
    except FileNotFoundError as exc:
        raise UsageError(f"{what} {p} is not a dataset folder ({exc}); give a save_to_disk folder, "
                         f"a data file or a dataset repository folder") from None
    except Exception as exc:  # datasets raises many types for unreadable files
        raise UsageError(f"cannot read {what} {p}: {_first_line(exc)}") from None
    if len(ds) == 0:
        raise UsageError(f"{what} {p} is empty: it needs at least one row")
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ds


def _load_file(p: Path, what: str):
    import datasets

    if p.suffix == ".jsonl" or p.suffix == ".json":
        return _load_json(p)
    if p.suffix == ".csv":
        return datasets.Dataset.from_csv(str(p), keep_in_memory=True)
    if p.suffix == ".parquet":
        return datasets.Dataset.from_parquet(str(p), keep_in_memory=True)
    raise UsageError(f"{what} {p}: unsupported file type '{p.suffix}' "
                     f"(use a save_to_disk folder or {'/'.join(DATA_SUFFIXES)})")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _refuse_split_or_subset(p: Path, kind: str, what: str, split: Optional[str],
                            subset: Optional[str]) -> None:
    for flag, value in (("--split", split), ("--subset", subset)):
        if value is not None:
            raise UsageError(f"{flag} {value}: {what} {p} is {kind}, which has no "
                             f"{'splits' if flag == '--split' else 'subsets'}; drop {flag}")


def _pick_split(splits: list[str], split: Optional[str], what: str, source) -> str:
    """The split to read: the one asked for, else `train`, else the only one (see load_rows)."""
    if not splits:
        raise UsageError(f"{what} {source} holds no splits; check that it holds data files")
    if split is not None:
        if split in splits:
            return split
        raise UsageError(f"{what} {source} has no split '{split}'; its splits: {', '.join(splits)} "
                         f"(pass --split NAME)")
    if "train" in splits:
        return "train"
    if len(splits) == 1:
        return splits[0]
    raise UsageError(f"{what} {source} has several splits: {', '.join(splits)}; choose one with "
                     f"--split NAME")


def _is_dataset_repository(p: Path) -> bool:
    """A folder to read with `load_dataset` rather than `load_from_disk` (see load_rows)."""
    if (p / "state.json").is_file() or (p / "dataset_dict.json").is_file():
        return False  # save_to_disk
    if (p / MANIFEST).is_file() or (p / "config.json").is_file():
        return False  # a ChainForge output or a model: load_from_disk says what is missing
    readme = p / "README.md"
    if readme.is_file() and _readme_has_configs(readme):
        return True
    base = len(p.parts)
    for folder, subfolders, files in os.walk(p):
        # Hidden folders (.git, .cache) hold no data; deep trees are not hub layouts.
        subfolders[:] = [d for d in subfolders if not d.startswith(".")] \
            if len(Path(folder).parts) - base < _REPOSITORY_DEPTH - 1 else []
        if any(Path(f).suffix in DATA_SUFFIXES for f in files if not f.startswith(".")):
            return True
    return False


def _readme_has_configs(readme: Path) -> bool:
    """True when the README's YAML header (between `---` lines) has a top-level `configs:` key."""
    try:
        lines = readme.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return False
    if not lines or lines[0].strip() != "---":
        return False
    for line in lines[1:]:
        if line.strip() == "---":
            return False
        if line.startswith("configs:"):
            return True
    return False


def _load_repository(source: str, what: str, split: Optional[str], subset: Optional[str], local: bool):
    """A dataset repository (local folder or hub id) through `datasets`' builder: the subset and
    split are checked against what the repository has before any data is converted."""
    import datasets

    # A local folder is converted in a throw-away cache (the rows are then held in memory); a hub
    # dataset uses the HF cache, which is what makes it load offline a second time.
    cache = tempfile.mkdtemp(prefix="chainforge-datasets-") if local else None
    bars_were_on = datasets.is_progress_bar_enabled()
    if local:
        datasets.disable_progress_bars()  # converting a local folder takes no time worth a bar
    try:
        try:
            builder = datasets.load_dataset_builder(source, subset, cache_dir=cache)
        except ValueError as exc:
            # A missing or unknown config name: list the subsets ourselves, in our words.
            names = datasets.get_dataset_config_names(source, cache_dir=cache)
            if local or names != ["default"]:
                if subset is None and len(names) > 1:
                    raise UsageError(f"{what} {source} has several subsets: {', '.join(names)}; "
                                     f"choose one with --subset NAME") from None
                if subset is not None and subset not in names:
                    raise UsageError(f"{what} {source} has no subset '{subset}'; its subsets: "
                                     f"{', '.join(names)} (pass --subset NAME)") from None
                raise
            # A hub dataset read back from the HF cache offline: only the cache knows which subsets
            # it holds, and datasets' message lists them (its Python example is left out).
            said = "; ".join(line.strip() for line in str(exc).splitlines()
                             if line.strip() and "load_dataset(" not in line and not line.startswith("Please"))
            raise UsageError(f"{what} {source}: {said} (choose one with --subset NAME)") from None
        # Split keys may be NamedSplit objects; the user names them by their strings.
        data_files = {str(k): v for k, v in (builder.config.data_files or {}).items()}
        splits = list(data_files) or [str(k) for k in (builder.info.splits or {})]
        chosen = _pick_split(splits, split, what, source)
        if local and len(data_files) > 1:
            # Convert only the split asked for: the others may be large.
            builder = datasets.load_dataset_builder(source, builder.config.name, cache_dir=cache,
                                                    data_files={chosen: list(data_files[chosen])})
        builder.download_and_prepare()
        ds = builder.as_dataset(split=chosen, in_memory=local)
        # Say which subset and split were read: a default pick should never be a surprise.
        info(f"{what} {source}: subset '{builder.config.name}', split '{chosen}' ({len(ds)} rows)")
        return ds
    except UsageError:
        raise
    except ConnectionError as exc:
        if local:
            raise UsageError(f"cannot read {what} {source}: {_first_line(exc)}") from None
        raise UsageError(
            f"{what} {source}: no file or folder of that name here, and the hub dataset '{source}' "
            f"cannot be loaded: it needs network access to the Hugging Face Hub, or a copy in the HF "
            f"cache from an earlier load (HF_HOME). Offline, download the repository elsewhere "
            f"(`hf download {source} --repo-type dataset --local-dir DIR`) and pass {what} DIR") from None
    except Exception as exc:
        if not local and type(exc).__name__ == "DatasetNotFoundError":
            raise UsageError(f"{what} {source}: no file or folder of that name here, and no dataset "
                             f"'{source}' on the Hugging Face Hub ({_first_line(exc)}); check the "
                             f"name, or log in (`hf auth login`) for a private or gated one") from None
        raise UsageError(f"cannot read {what} {source}: {_first_line(exc)}") from None
    finally:
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)
        if local and bars_were_on:
            datasets.enable_progress_bars()


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
                     answer_required: bool = False, limit: Optional[int] = None, what: str = "--data",
                     split: Optional[str] = None, subset: Optional[str] = None):
    """Load prompt rows and check them before anything is created: the prompt column holds
    non-empty strings or lists of {role, content} messages, the answer column (see
    `answer_column`; None when absent and not required) strings or numbers. Returns (dataset,
    answer column). A bad value is exit 2 naming the column and the first bad row."""
    ds = load_rows(path, limit, what=what, split=split, subset=subset)
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
        m = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return m if isinstance(m, dict) else None


def input_record(path: str | os.PathLike) -> dict:
    """How a manifest names one input: its path and, if it is a ChainForge output, its fingerprint."""
    m = read_manifest(path) if Path(path).is_dir() else None
    rec = {"path": str(path)}
    if m:
        rec.update(stage=m.get("stage"), fingerprint=m.get("fingerprint"), status=m.get("status"))
    return rec


# ---- writing ------------------------------------------------------------------------------------

def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` so that a crash leaves the old file or the new one, never half of
    one: write a temporary file, fsync it, rename it in, then fsync the folder (without that last
    step a power cut can lose the rename, leaving the old manifest after the new results)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _fsync_tree(path: Path) -> None:
    if path.is_symlink():
        return
    if path.is_dir():
        for child in path.iterdir():
            _fsync_tree(child)
        fsync_dir(path)
        return
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(folder: str | os.PathLike) -> None:
    """fsync a folder, so that the renames and new names in it survive a crash of the machine."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # a platform without directory handles (Windows): nothing more to do
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a folder; the rename itself is still atomic
    finally:
        os.close(fd)


def _fingerprint(manifest: dict) -> str:
    body = {k: manifest.get(k) for k in ("stage", "config", "inputs", "metrics", "created")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- what --output may be -------------------------------------------------------------------------

# Every option that names something a stage reads. An --output that is, holds or lies inside one of
# them would write over (or, with --overwrite, delete) the stage's own input.
INPUT_OPTIONS = ("model", "data", "prompts", "teacher", "student", "compare", "eval_data", "teacher_model",
                 "against")


def _input_paths(config) -> list[tuple[str, str, Path]]:
    """(flag, value as given, resolved path) for every input option that names an existing path.
    Read with getattr only, so any options object works (a dict with attributes or a dataclass);
    hub ids and model names that are not paths on this machine are not inputs on disk."""
    found = []
    for name in INPUT_OPTIONS:
        value = getattr(config, name, None)
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if not isinstance(v, (str, os.PathLike)) or not str(v).strip():
                continue
            path = Path(v).expanduser()
            if path.exists():
                found.append(("--" + name.replace("_", "-"), str(v), path.resolve()))
    return found


def _check_not_an_input(p: Path, resolved: Path, config) -> None:
    for flag, given, inp in _input_paths(config):
        if resolved == inp:
            how = "is"
        elif resolved in inp.parents:
            how = "contains"
        elif inp in resolved.parents:
            how = "lies inside"
        else:
            continue
        raise UsageError(f"--output {p} {how} the {flag} input {given}; write the results to a "
                         f"folder of their own, outside every input")


def _protected(resolved: Path) -> Optional[str]:
    """Why --overwrite must never remove this folder, or None."""
    cwd = Path.cwd().resolve()
    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError):  # no HOME and no password entry: there is no home to protect
        home = Path(resolved.anchor)
    if resolved == Path(resolved.anchor):
        return "the filesystem root"
    if resolved == home:
        return "your home directory"
    if resolved == cwd:
        return "the current directory"
    if resolved in cwd.parents:
        return "a parent of the current directory"
    if resolved in home.parents:
        return "a parent of your home directory"
    return None


def written_by_chainforge(manifest: Optional[dict]) -> bool:
    """A manifest chainforge wrote: its fields are there and its fingerprint matches its content."""
    if not isinstance(manifest, dict):
        return False
    if not all(k in manifest for k in ("stage", "chainforge_version", "fingerprint")):
        return False
    try:
        return manifest["fingerprint"] == _fingerprint(manifest)
    except (TypeError, ValueError):
        return False


def _entries(folder: Path) -> list[Path]:
    """What a folder holds, leaving out our own lock file."""
    return [c for c in folder.iterdir() if c.name != LOCK]


# ---- one writer per output ----------------------------------------------------------------------

LOCK = ".chainforge.lock"
_held: dict[str, Any] = {}  # resolved output folder → the FileLock this process holds on it


def lock_output(folder: Path) -> bool:
    """Take `folder`'s lock for this process until it exits; exit 2 if another process holds it.

    The lock is `flock` on `folder/.chainforge.lock` (through the filelock package): the kernel drops
    it when the holder dies, so a lock left by a killed run never blocks its resume. The holder's pid
    is written into the file for the message. A process that holds the lock already keeps it (the
    CLI, `run` and tests may plan the same output more than once in one process). True when this
    call took the lock, False when it was held already (or this rank does not write)."""
    if not distributed.is_main():
        return False
    from filelock import FileLock, Timeout

    key = str(folder.resolve())
    lock_path = Path(key) / LOCK
    held = _held.get(key)
    if held is not None:
        if held.is_locked and lock_path.exists():
            return False
        _held.pop(key).release(force=True)  # the folder was removed and made again under us

    def write_pid(fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    lock = FileLock(str(lock_path), timeout=0, on_acquired=write_pid)
    try:
        lock.acquire()
    except Timeout:
        raise UsageError(f"{folder} is in use by chainforge (pid {_holder_pid(lock_path)}); wait for that "
                         f"run to finish, or write to another --output") from None
    if not _held:
        atexit.unregister(release_output_locks)  # registered once, however often locks come and go
        atexit.register(release_output_locks)
    _held[key] = lock
    return True


def _holder_pid(lock_path: Path) -> str:
    try:
        text = lock_path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return "unknown"
    return text if text.isdigit() else "unknown"


def release_output_lock(folder: str | os.PathLike) -> None:
    """Give up `folder`'s lock (if this process holds it) and remove the lock file.

    The file goes while the lock is still held: a process that opened it in that instant finds the
    name unlinked after its flock succeeds and starts over on a new file (filelock checks this)."""
    lock = _held.pop(str(Path(folder).resolve()), None)
    if lock is None:
        return
    try:
        Path(lock.lock_file).unlink(missing_ok=True)
    except OSError:
        pass
    try:
        lock.release(force=True)
    except OSError:
        pass


def release_output_locks() -> None:
    """Release every output lock this process holds; runs at exit (the kernel would drop them
    anyway, this also removes the lock files)."""
    for key in list(_held):
        release_output_lock(key)


# ---- the output's life cycle --------------------------------------------------------------------

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
        if self.mode == "new":
            self.path.mkdir(parents=True, exist_ok=True)
            lock_output(self.path)
            # Another process may have made and filled the folder since it was planned.
            if _entries(self.path) and read_manifest(self.path) is not None:
                raise UsageError(f"--output {self.path} was written by another run since this one "
                                 f"started; rerun the command to resume or choose another --output")
        elif self.mode == "overwrite":
            lock_output(self.path)
            # Only what chainforge made goes (plan_output checked the manifest); the lock file
            # stays, so the lock this process holds stays valid.
            for child in _entries(self.path):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        else:
            lock_output(self.path)
        created = (self.previous or {}).get("created") if self.resuming else None
        out = StageOutput(self.path, self.stage, self.config,
                          [input_record(i) for i in inputs],
                          created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        out.write_manifest("running", (self.previous or {}).get("metrics", {}) if self.resuming else {})
        return out


def plan_output(path: Optional[str], stage: str, config: Any, overwrite: bool = False,
                ignore: Iterable[str] = (), allow_complete: bool = False) -> OutputPlan:
    """Decide what to do with `--output` before anything is created (exit 2 on a conflict).

    `ignore`: options that may change between a run and its resumption (concurrency, say).
    `allow_complete`: the stage itself knows what to do with a complete output (collect's
    --retry-failed); otherwise a complete output needs --overwrite.

    Refused whatever else is asked: an --output that is, holds or lies inside an input of the same
    command (read from `config`). --overwrite removes only a folder holding a manifest chainforge
    wrote, and never the current directory, a parent of it, the home directory or the root. An
    existing output folder is locked here, so a second process stops before it loads anything.
    """
    if not path:
        raise UsageError("missing --output: give the folder to write to")
    p = Path(path)
    try:
        resolved = p.expanduser().resolve()
        Path.cwd()
    except FileNotFoundError:
        raise UsageError("the current directory no longer exists; cd to an existing folder and rerun") from None
    redacted = config.redacted() if hasattr(config, "redacted") else dict(config)
    if p.exists() and not p.is_dir():
        raise UsageError(f"--output {p} exists and is not a folder; choose another path")
    _check_not_an_input(p, resolved, config)
    if overwrite:
        why = _protected(resolved)
        if why:
            raise UsageError(f"--output {p} is {why}; --overwrite never removes it: give the run a "
                             f"folder of its own, such as {p / stage}")
    if not p.exists():
        return OutputPlan(p, stage, redacted, "new")
    if _entries(p) and read_manifest(p) is None:
        raise UsageError(f"--output {p} is not empty and holds no {MANIFEST}: it is not a chainforge "
                         f"output, and chainforge never writes into or removes other folders; choose "
                         f"a new or empty folder")
    if overwrite and _entries(p) and not written_by_chainforge(read_manifest(p)):
        raise UsageError(f"--output {p} holds a {MANIFEST} that chainforge did not write (or that was "
                         f"edited), so it is not removed; choose a new or empty folder")
    # Ours (or empty): lock it before looking closer, so that a second process stops here.
    took = lock_output(p)
    try:
        return _plan_existing(p, stage, redacted, overwrite, ignore, allow_complete)
    except UsageError:
        if took:
            release_output_lock(p)  # refused: leave the folder as it was
        raise


def _plan_existing(p: Path, stage: str, redacted: dict, overwrite: bool, ignore: Iterable[str],
                   allow_complete: bool) -> OutputPlan:
    if not _entries(p):
        return OutputPlan(p, stage, redacted, "new")
    previous = read_manifest(p) or {}
    if overwrite:
        return OutputPlan(p, stage, redacted, "overwrite")
    if previous.get("stage") != stage:
        raise UsageError(f"--output {p} is not empty (a '{previous.get('stage')}' output); choose an "
                         f"empty folder or pass --overwrite to replace it")
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

    def manifest(self, status: str, metrics: dict, extra: Optional[dict] = None) -> dict:
        m = {
            "stage": self.stage,
            "chainforge_version": __version__,
            "created": self.created,
            "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "config": self.config,
            "inputs": self.inputs,
            "metrics": metrics,
            "status": status,
            **(extra or {}),
        }
        m["fingerprint"] = _fingerprint(m)
        return m

    def write_manifest(self, status: str, metrics: Optional[dict] = None, extra: Optional[dict] = None) -> None:
        atomic_write_text(self.path / MANIFEST,
                          json.dumps(self.manifest(status, metrics or {}, extra), indent=2, default=str) + "\n")

    def finish(self, metrics: dict) -> None:
        """The last write of a stage: the card (README.md), then the manifest says complete, and the
        output is free again."""
        from chainforge.cards import write_card

        try:
            extra = write_card(self, metrics)
        except Exception as exc:  # the card describes the work; it must not cost the work itself
            info(f"warning: no card written for {self.path}: {type(exc).__name__}: {exc}")
            extra = {}
        self.write_manifest("complete", metrics, extra)
        release_output_lock(self.path)

    def mark_incomplete(self, metrics: Optional[dict] = None) -> None:
        """A stage that stops early (crash, Ctrl-C, budget) says so last; the same command resumes.
        The lock goes with it, so that in-process callers (`run`, the Python API) can resume at once."""
        self.write_manifest("incomplete", metrics)
        release_output_lock(self.path)

    def _move_in(self, tmp: Path, last: Iterable[str] = ()) -> None:
        """Rename every file of `tmp` into the output folder; the `last` names go in last."""
        last = list(last)
        names = sorted(n for n in os.listdir(tmp) if n not in last) + [n for n in last if (tmp / n).exists()]
        # The bytes reach the disk before any name moves in: a crash of the machine must not leave a
        # renamed-in file that is empty (filesystems may write the rename before the data).
        for name in names:
            _fsync_tree(tmp / name)
        for name in names:
            dest = self.path / name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            os.replace(tmp / name, dest)
        fsync_dir(self.path)
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
