"""Results out: the output folder's life cycle, its manifest and lock, and writes that survive a crash.
Reading inputs is `chainforge.inputs`.

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
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from chainforge import __version__, distributed
from chainforge.config import config_differences
from chainforge.errors import UsageError
from chainforge.log import info

MANIFEST = "chainforge.json"
# What writes a finished output's card (README.md, a checkpoint's system prompt): chainforge.cards,
# above this module; the stage registry (chainforge.stages) sets it. Returns the fields the manifest
# adds.
_card_writer: Optional[Callable[["StageOutput", dict], dict]] = None


def set_card_writer(write: Optional[Callable[["StageOutput", dict], dict]]) -> None:
    global _card_writer
    _card_writer = write



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
    from chainforge.decontam import eval_set_path

    found = []
    for name in INPUT_OPTIONS:
        value = getattr(config, name, None)
        values = value if isinstance(value, (list, tuple)) else [value]
        if name == "against":  # eval sets: PATH[:column=…][:subset=…][:split=…]
            values = [eval_set_path(v) for v in values]
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


def _precision_used(config) -> Optional[str]:
    """What a stage's `--precision` resolved to on this machine (chainforge.models.precision_used);
    None for stages without the option and for vLLM sampling, whose dtype vLLM chooses."""
    if not isinstance(config, dict) or config.get("precision") is None or config.get("backend") == "vllm":
        return None
    from chainforge.models import precision_used

    return precision_used(str(config["precision"]))


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
        used = _precision_used(self.config)
        if used:
            m["precision_used"] = used
        m["fingerprint"] = _fingerprint(m)
        return m

    def write_manifest(self, status: str, metrics: Optional[dict] = None, extra: Optional[dict] = None) -> None:
        atomic_write_text(self.path / MANIFEST,
                          json.dumps(self.manifest(status, metrics or {}, extra), indent=2, default=str) + "\n")

    def finish(self, metrics: dict) -> None:
        """The last write of a stage: the card (README.md), then the manifest says complete, and the
        output is free again."""
        try:
            extra = _card_writer(self, metrics) if _card_writer else {}
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


def create_output(plan, inputs: Sequence = ()):
    """`plan.create(inputs)` on rank 0 only, after every rank has planned (so no rank sees the folder
    change under it) and before any goes on (so every rank can write its shard journal into it).
    The other ranks get a StageOutput for the same folder that has written nothing: ranks never
    race on the folder, its lock or its manifest."""
    if distributed.world_size() <= 1:
        return plan.create(inputs=inputs)
    distributed.barrier()
    out = distributed.on_main(lambda: plan.create(inputs=inputs), f"creating {plan.path}")
    if out is not None:
        return out
    return StageOutput(plan.path, plan.stage, plan.config, [input_record(i) for i in inputs], "")


def output_kind(folder: str | os.PathLike) -> Optional[str]:
    """'dataset', 'checkpoint' or None: what a finished output folder holds."""
    p = Path(folder)
    if (p / "state.json").is_file() and (p / "dataset_info.json").is_file():
        return "dataset"
    if (p / "config.json").is_file():
        return "checkpoint"
    return None
