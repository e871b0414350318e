#!/usr/bin/env bash
# The README's main job: set up ./.venv, run the whole pipeline on the embedded SmolLM2 and the
# shipped toy task (configs/demo.yaml), then write the report card.
#   scripts/demo.sh                 # resumes / skips finished stages when run again
#   RUN_DIR=runs/demo scripts/demo.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh" >&2
cd "$ROOT"
RUN_DIR="${RUN_DIR:-runs/demo}"   # must match run_dir in configs/demo.yaml
chainforge --version
chainforge run configs/demo.yaml
chainforge report "$RUN_DIR"
echo "Report: $ROOT/$RUN_DIR/report.md (plots in $ROOT/$RUN_DIR/plots/)"
