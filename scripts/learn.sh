#!/usr/bin/env bash
# The learning experiment (configs/learn.yaml): every training stage on the embedded SmolLM2 and the
# two-digit toy task, each checkpoint evaluated on the same 400 held-out questions (and the 200 reworded ones), then the report
# card with the per-stage table and plot.
#   scripts/learn.sh                 # resumes / skips finished stages when run again
#   RUN_DIR=runs/learn scripts/learn.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh" >&2
cd "$ROOT"
RUN_DIR="${RUN_DIR:-runs/learn}"   # must match run_dir in configs/learn.yaml
chainforge --version
start=$SECONDS
chainforge run configs/learn.yaml
echo "learn: all stages and evals in $((SECONDS - start)) s"
# the report's first table answers "did each stage help": pass@1 ± interval and the paired delta
chainforge report "$RUN_DIR"
echo "Report: $ROOT/$RUN_DIR/report.md (plots in $ROOT/$RUN_DIR/plots/)"
