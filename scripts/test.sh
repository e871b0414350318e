#!/usr/bin/env bash
# The test suite: sets itself up (./.venv), then runs pytest.
#   scripts/test.sh            default suite (< 15 min on 2 cores)
#   scripts/test.sh --slow     the slow marker only (real SmolLM2, multi-process, learning signal)
#   scripts/test.sh --all      both
# Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh" >&2
cd "$ROOT"
marker=(-m "not slow")
case "${1:-}" in
  --slow) marker=(-m slow); shift ;;
  --all) marker=(-m "slow or not slow"); shift ;;
esac
exec python -m pytest "${marker[@]}" -q "$@"
