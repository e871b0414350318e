#!/usr/bin/env bash
# The test suite: sets itself up (./.venv), then runs pytest.
#   scripts/test.sh            everything: the default tests and the slow ones (CI runs this)
#   scripts/test.sh --fast     the default tests only (no slow marker): the quick check while working
#   scripts/test.sh --slow     the slow marker only (real SmolLM2, multi-process, learning signal)
#   scripts/test.sh --all      the same as no option
# Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh" >&2
cd "$ROOT"
marker=(-m "slow or not slow")
case "${1:-}" in
  --fast) marker=(-m "not slow"); shift ;;
  --slow) marker=(-m slow); shift ;;
  --all) shift ;;
esac
exec python -m pytest "${marker[@]}" -q "$@"
