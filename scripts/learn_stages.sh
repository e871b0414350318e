#!/usr/bin/env bash
# The learning experiment of configs/learn.yaml, one stage command at a time, with a held-out eval
# after every training stage (each compared, paired, with the eval of its input checkpoint), so that
# every figure in the report card has the command that made it. Finished outputs are skipped, so a
# rerun resumes. The GRPO gain is measured for each seed in GRPO_SEEDS (the recipe uses the first).
#   scripts/learn_stages.sh                          # runs/learn-stages
#   RUN_DIR=runs/x GRPO_SEEDS="0 1" UNTIL=grpo scripts/learn_stages.sh
#   then: chainforge report runs/learn-stages
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
read -r -a CF <<< "${CHAINFORGE:-chainforge}"   # e.g. CHAINFORGE="python -m chainforge"
RUN_DIR="${RUN_DIR:-runs/learn-stages}"
GRPO_SEEDS="${GRPO_SEEDS:-0 1}"
UNTIL="${UNTIL:-all}"          # grpo: stop after the GRPO evals; all: reject, sft-more, distill too
DATA=data/toy-2digit
E="$RUN_DIR/evals"
# The one sampling setting every eval shares (same questions, same samples: paired deltas are fair).
EVAL=(--data "$DATA/test.jsonl" --num-samples 2 --max-new-tokens 144 --seed 0)

done_() { [[ -f "$1/chainforge.json" ]] && grep -q '"status": "complete"' "$1/chainforge.json"; }
step() {  # step OUT CMD...: run unless OUT is complete, log the command and its wall time
  local out="$1"; shift
  if done_ "$out"; then echo "skip $out (complete)"; return; fi
  echo "+ $*" | tee -a "$RUN_DIR/commands.log"
  local t0=$SECONDS
  "$@"
  echo "  $out: $((SECONDS - t0)) s" | tee -a "$RUN_DIR/commands.log"
}
mkdir -p "$E"

# cold start on worked solutions, balanced over + / - and negative answers (the local teacher's
# correct rows taught no subtraction)
step "$RUN_DIR/01-sft-cold" "${CF[@]}" sft --model smollm2 --data "$DATA/sft.jsonl" --output "$RUN_DIR/01-sft-cold" \
  --max-steps 12 --batch-size 8 --learning-rate 2e-4 --warmup-ratio 0.1 --max-length 512 --max-new-tokens 128 --seed 0
# GRPO from the SFT checkpoint at lr 2e-5 with warmup (1e-4 without warmup collapsed in one update;
# 1e-5 gained +0.13 in 10 steps on the one-digit task), one run per seed, each compared with the SFT
# checkpoint on the same questions. The SFT eval and the seeds run side by side, one thread each
# (several 2-thread processes on 2 cores thrash). The SFT eval is compared with the base model when
# the base eval is there: it runs last, because the base model writes neither Super CoT nor
# \boxed{}, so its samples run to the token cap (the slowest eval of all).
BASE=()
done_ "$E/00-base" && BASE=(--compare "$E/00-base")
pids=()
OMP_NUM_THREADS=1 step "$E/01-sft-cold" "${CF[@]}" eval --model "$RUN_DIR/01-sft-cold" --output "$E/01-sft-cold" \
  "${EVAL[@]}" "${BASE[@]}" > "$E/01-sft-cold.log" 2>&1 &
pids+=($!)
for seed in $GRPO_SEEDS; do
  OMP_NUM_THREADS=1 step "$RUN_DIR/02-rl-s$seed" "${CF[@]}" grpo --model "$RUN_DIR/01-sft-cold" \
    --data "$DATA/train.jsonl" --output "$RUN_DIR/02-rl-s$seed" --max-steps 8 --num-generations 4 \
    --prompts-per-step 3 --max-new-tokens 144 --learning-rate 2e-5 --warmup-ratio 0.1 --save-steps 4 \
    --seed "$seed" > "$RUN_DIR/02-rl-s$seed.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
pids=()
for seed in $GRPO_SEEDS; do
  OMP_NUM_THREADS=1 step "$E/02-rl-s$seed" "${CF[@]}" eval --model "$RUN_DIR/02-rl-s$seed" \
    --output "$E/02-rl-s$seed" "${EVAL[@]}" --compare "$E/01-sft-cold" > "$E/02-rl-s$seed.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
# the base model on the held-out split
step "$E/00-base" "${CF[@]}" eval --model smollm2 --output "$E/00-base" "${EVAL[@]}"
[[ "$UNTIL" == grpo ]] && exit 0

SEED0="${GRPO_SEEDS%% *}"
RL="$RUN_DIR/02-rl-s$SEED0"
# rejection sampling: best of 4 per train question, from the RL checkpoint
step "$RUN_DIR/03-reject" "${CF[@]}" reject --model "$RL" --data "$DATA/train.jsonl" --output "$RUN_DIR/03-reject" \
  --limit 200 --num-samples 4 --max-new-tokens 144 --seed 0
# more SFT on the kept rows, gently (lr 1e-5, warmup): 1e-4 on rows the model already fits moved
# every weight by about the learning rate and cost 0.2 pass@1
step "$RUN_DIR/04-sft-more" "${CF[@]}" sft --model "$RL" --data "$RUN_DIR/03-reject" --output "$RUN_DIR/04-sft-more" \
  --max-steps 10 --batch-size 8 --learning-rate 1e-5 --warmup-ratio 0.1 --max-length 512 --max-new-tokens 128 --seed 0
step "$E/04-sft-more" "${CF[@]}" eval --model "$RUN_DIR/04-sft-more" --output "$E/04-sft-more" "${EVAL[@]}" --compare "$E/02-rl-s$SEED0"
# distillation into smollm2-half, compared with the student before it
step "$E/05-distill-student-start" "${CF[@]}" eval --model smollm2-half --output "$E/05-distill-student-start" "${EVAL[@]}"
step "$RUN_DIR/05-distill" "${CF[@]}" distill --teacher "$RUN_DIR/04-sft-more" --student smollm2-half --data "$DATA/train.jsonl" \
  --output "$RUN_DIR/05-distill" --limit 200 --num-samples 1 --max-new-tokens 144 --max-steps 30 --batch-size 8 \
  --learning-rate 1e-4 --seed 0
step "$E/05-distill" "${CF[@]}" eval --model "$RUN_DIR/05-distill" --output "$E/05-distill" "${EVAL[@]}" \
  --compare "$E/05-distill-student-start"
