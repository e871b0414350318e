#!/usr/bin/env bash
# The GRPO gain of configs/learn.yaml for more seeds. For each seed: the recipe's `rl` stage with the
# recipe's own options and `--seed S`, from the recipe's cold-SFT checkpoint, then an eval with the
# recipe's `eval` options (and one per `extra_evals` set), compared (paired, same questions) with the
# recipe's eval of that checkpoint; then the report, whose seeds table pools the recipe's own run with
# these. Run scripts/learn.sh first: it makes the checkpoint and its evals.
#   GRPO_SEEDS="1 2" scripts/learn_seeds.sh   # -> runs/learn/seeds/rl-s1, seeds/evals/rl-s1, …
#   scripts/learn_seeds.sh                    # seed 1 only
#   RL_OPTIONS="learning_rate=3.0e-5" TAG=lr3e-5 GRPO_SEEDS="0 1" scripts/learn_seeds.sh
#                                             # a variant of the rl stage: rl-lr3e-5-s0, rl-lr3e-5-s1
#   DRY_RUN=1 scripts/learn_seeds.sh          # print the commands only
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh" >&2
cd "$ROOT"
RECIPE="${RECIPE:-configs/learn.yaml}"
for seed in ${GRPO_SEEDS:-1}; do
  # command lines: grpo, then its evals (the recipe's options as flags)
  mapfile -t commands < <(python - "$RECIPE" "$seed" "${RL_OPTIONS:-}" "${TAG:-}" <<'PY'
import dataclasses
import sys
from pathlib import Path

import yaml

from chainforge.config import cli_args
from chainforge.stages import stage_module
from chainforge.stages.run import load_recipe, plan_run

path, seed, options, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in options.split())}
recipe = load_recipe(path)
plan, _ = plan_run(recipe)                        # run's own plan: stage folders and inputs
rl = next(s for s in plan if s.command == "grpo")
start = Path(rl.config.model)                     # the checkpoint GRPO starts from in the recipe
start_eval = rl.output.parent / "evals" / start.name
for folder in (start, start_eval):
    if not (folder / "chainforge.json").is_file():
        sys.exit(f"Error: {folder} is missing: run scripts/learn.sh first")
name = f"{rl.name}{'-' + tag if tag else ''}-s{seed}"
out = rl.output.parent / "seeds"   # inside run_dir: `chainforge report` pools it with the recipe's run


def command(stage: str, options: dict) -> str:
    fields = {f.name: f for f in dataclasses.fields(stage_module(stage).CONFIG)}
    words = [w for key, value in options.items() if value is not None for w in cli_args(fields[key], value)]
    return " ".join(["chainforge", stage, *words])


print(command("grpo", {**rl.options, **overrides, "seed": seed, "output": out / name}))
print(command("eval", {**(recipe.get("eval") or {}), "model": out / name, "data": recipe["eval_data"],
                       "output": out / "evals" / name, "compare": start_eval}))
for extra, options in (recipe.get("extra_evals") or {}).items():
    print(command("eval", {**(recipe.get("eval") or {}), **options, "model": out / name,
                           "output": out / f"evals-{extra}" / name,
                           "compare": start_eval.parent.with_name(f"evals-{extra}") / start.name}))
PY
)
  [[ ${#commands[@]} -ge 2 ]] || exit 2
  if [[ -n "${DRY_RUN:-}" ]]; then printf '%s\n' "${commands[@]}"; continue; fi
  for cmd in "${commands[@]}"; do
    echo "+ $cmd"
    t0=$SECONDS
    eval "$cmd"
    echo "  $((SECONDS - t0)) s"
  done
done
if [[ -z "${DRY_RUN:-}" ]]; then
  run_dir=$(python -c 'import sys; from chainforge.stages.run import load_recipe; print(load_recipe(sys.argv[1])["run_dir"])' "$RECIPE")
  chainforge report "$run_dir"   # its seeds table: each seed's paired delta and the pooled one
fi
