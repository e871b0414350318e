"""Data in: load any input (a data file, a save_to_disk folder, a dataset repository folder, a
hub dataset id), pick its split and subset, and check its columns and prompt rows before anything is
created. The output folder's life cycle is `chainforge.outputs`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Optional

from chainforge.errors import UsageError
from chainforge.log import info
from chainforge.outputs import MANIFEST

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
