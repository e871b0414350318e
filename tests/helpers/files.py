"""Files the tests write and read."""

from __future__ import annotations

import json
from pathlib import Path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def manifest(out: Path) -> dict:
    """The manifest of an output folder, read by the package's own reader (one must be there)."""
    from chainforge.outputs import read_manifest

    m = read_manifest(out)
    assert m is not None, f"no readable chainforge.json in {out}"
    return m


def read_toml(path: Path) -> dict:
    """A TOML file as a dict: tomllib from Python 3.11, tomli on 3.10 (pytest itself requires it there)."""
    try:
        import tomllib
    except ModuleNotFoundError:
        import tomli as tomllib
    return tomllib.loads(Path(path).read_text(encoding="utf-8"))
