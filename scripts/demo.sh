#!/usr/bin/env bash
# The README's main job: set up ./.venv, then run ChainForge on the embedded default model.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh" >&2
cd "$ROOT"
chainforge --version
