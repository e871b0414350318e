#!/usr/bin/env bash
# The GRPO gain of configs/learn.yaml for more seeds. For each seed: the recipe's `rl` stage with the
# recipe's own options and `--seed S`, from the recipe's cold-SFT checkpoint, then an eval with the
# recipe's `eval` options, compared (paired, same questions) with the recipe's eval of that
# checkpoint. Run scripts/learn.sh first: it makes the checkpoint and its eval.
#   scripts/learn_seeds.sh                 # seed 1 -> runs/learn-seeds/rl-s1, evals/rl-s1
#   GRPO_SEEDS="1 2" scripts/learn_seeds.sh
#   RL_OPTIONS="learning_rate=3.0e-5" TAG=lr3e-5 GRPO_SEEDS="0 1" scripts/learn_seeds.sh
#                                          # a variant of the rl stage: rl-lr3e-5-s0, rl-lr3e-5-s1
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh" >&2
cd "$ROOT"
RECIPE="${RECIPE:-configs/learn.yaml}"
for seed in ${GRPO_SEEDS:-1}; do
  # two command lines: grpo, then eval (the recipe's options as flags)
  mapfile -t commands < <(python - "$RECIPE" "$seed" "${RL_OPTIONS:-}" "${TAG:-}" <<'PY'
import shlex
import sys
from pathlib import Path

import yaml

path, seed, options, tag = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in options.split())}
learn = yaml.safe_load(path.read_text())
names = [s["name"] for s in learn["stages"]]
rl = next(s for s in learn["stages"] if s["command"] == "grpo")
sft = names[names.index(rl["name"]) - 1]          # the checkpoint GRPO starts from in the recipe
run_dir = Path(learn["run_dir"])
start, start_eval = run_dir / f"{names.index(sft):02d}-{sft}", run_dir / "evals" / f"{names.index(sft):02d}-{sft}"
for folder in (start, start_eval):
    if not (folder / "chainforge.json").is_file():
        sys.exit(f"Error: {folder} is missing: run scripts/learn.sh first")
name = f"{rl['name']}{'-' + tag if tag else ''}-s{seed}"
out = Path(f"{run_dir}-seeds")


def flags(options: dict) -> str:
    skip = {"name", "command", "model", "data", "output"}
    return " ".join(f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in options.items() if k not in skip)


grpo = {**rl, **overrides, "seed": seed}
print(f"chainforge grpo --model {start} --data {learn['prompts']} --output {out / name} {flags(grpo)}")
print(f"chainforge eval --model {out / name} --data {learn['eval_data']} --output {out / 'evals' / name} "
      f"--compare {start_eval} {flags(learn.get('eval') or {})}")
PY
)
  [[ ${#commands[@]} -eq 2 ]] || exit 2
  for cmd in "${commands[@]}"; do
    echo "+ $cmd"
    t0=$SECONDS
    eval "$cmd"
    echo "  $((SECONDS - t0)) s"
  done
done
