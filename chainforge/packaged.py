"""The recipes (configs/) and toy tasks (data/) that ship with ChainForge.

In a checkout they are the repository's own configs/ and data/ folders; in an installed wheel they
are chainforge/share/configs and chainforge/share/data (pyproject.toml maps one onto the other).
Both lay them out the same way, so a recipe's relative paths (`prompts: data/toy/train.jsonl`,
`config: sft-cpu-small.yaml`) mean the same thing in either place:

    chainforge run demo            # the packaged configs/demo.yaml, reading the packaged toy task
    chainforge init my-project     # editable copies: my-project/configs, my-project/data
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

from chainforge.errors import UsageError

FOLDERS = ("configs", "data")
# What counts as shipped, the same globs as pyproject.toml's package-data: a checkout's data/ may
# also hold a user's own downloads, which neither ship nor get copied by `init`.
PATTERNS = {"configs": ("*.yaml",), "data": ("*.jsonl", "*.json", "*.parquet", "*.csv", "*.md")}
# Recipe and stage keys that name files: anchored to the packaged copies when they exist there.
PATH_KEYS = ("prompts", "eval_data", "data", "against")


def share_root() -> Optional[Path]:
    """The folder holding configs/ and data/: inside the installed package, else the checkout."""
    package = Path(__file__).resolve().parent
    for root in (package / "share", package.parent):
        if (root / "configs").is_dir():
            return root
    return None


def shipped_files(root: Path) -> list[Path]:
    """Every shipped file under root, relative to it (configs/… then data/…)."""
    files: set[Path] = set()
    for folder in FOLDERS:
        for pattern in PATTERNS[folder]:
            files.update(p.relative_to(root) for p in (root / folder).rglob(pattern)
                         if p.is_file() and "__pycache__" not in p.parts)
    return sorted(files)


def recipe_names(root: Optional[Path] = None) -> list[str]:
    """The packaged recipes: the YAML files in configs/ with a `stages` list (the others are option
    files for single commands)."""
    import yaml

    root = root or share_root()
    names = []
    for path in sorted((root / "configs").glob("*.yaml")) if root else []:
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("stages"), list):
            names.append(path.stem)
    return names


def find_recipe(recipe: str) -> tuple[Path, Optional[Path]]:
    """The recipe file, and the packaged root when RECIPE names a packaged recipe rather than a
    file (a file of that name always wins)."""
    path = Path(recipe).expanduser()
    if path.is_file():
        return path, None
    root = share_root()
    name = recipe[:-5] if recipe.endswith(".yaml") else recipe
    if root is not None and "/" not in name and name in recipe_names(root):
        return root / "configs" / f"{name}.yaml", root
    known = ", ".join(recipe_names(root)) or "none found"
    raise UsageError(f"recipe not found: {recipe} (give a recipe file, or a packaged recipe name: {known}; "
                     f"`chainforge init DIR` writes editable copies)")


def anchor_paths(recipe: dict, root: Path) -> None:
    """Point a packaged recipe's relative file paths at the packaged copies. Only paths that exist
    there move: hub ids (`openai/gsm8k`) and `run_dir` (the user's working folder) stay as written."""
    def anchored(value: Any) -> Any:
        if isinstance(value, list):
            return [anchored(v) for v in value]
        if isinstance(value, str) and not Path(value).expanduser().is_absolute() and (root / value).exists():
            return str(root / value)
        return value

    for key in PATH_KEYS:
        if key in recipe:
            recipe[key] = anchored(recipe[key])
    for stage in [*(recipe.get("stages") or []), *(v for v in (recipe.get("extra_evals") or {}).values()
                                                   if isinstance(v, dict))]:
        for key in PATH_KEYS:
            if key in stage:
                stage[key] = anchored(stage[key])


def init_project(directory: str) -> list[Path]:
    """Copy the shipped recipes and task data into DIRECTORY (created if needed), keeping their
    layout so `cd DIRECTORY && chainforge run configs/demo.yaml` works. Refuses, writing nothing,
    when any of the files is already there; never deletes anything."""
    root = share_root()
    if root is None:
        raise UsageError("no packaged recipes found: this installation of chainforge lacks its configs/ "
                         "and data/ (reinstall the chainforge-r1 wheel)")
    target = Path(directory).expanduser()
    if target.exists() and not target.is_dir():
        raise UsageError(f"init {directory}: exists and is not a folder; give a new or existing folder")
    files = shipped_files(root)
    clashes = [str(target / f) for f in files if (target / f).exists() or (target / f).is_symlink()]
    if clashes:
        more = f" and {len(clashes) - 5} more" if len(clashes) > 5 else ""
        raise UsageError(f"init {directory}: would overwrite {', '.join(clashes[:5])}{more}; move them away "
                         f"or choose another folder (nothing was written)")
    for rel in files:
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / rel, dest)
    return [target / f for f in files]
