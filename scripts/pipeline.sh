#!/usr/bin/env bash
# The whole ChainForge pipeline as individual commands, in the seed's order — a readable
# alternative to `chainforge run RECIPE.yaml`. Every path is a variable; override any of them:
#   MODEL=Qwen/Qwen2.5-7B STUDENT=Qwen/Qwen2.5-1.5B TEACHER=deepseek scripts/pipeline.sh
# Defaults run the embedded SmolLM2 on the shipped toy task with tiny step counts.
set -euo pipefail

MODEL="${MODEL:-smollm2}"                 # base model (stage 1 starts from it)
STUDENT="${STUDENT:-smollm2-half}"        # stage 5's student
TEACHER="${TEACHER:-local}"               # collect's reasoner: deepseek | openai | local
TEACHER_MODEL="${TEACHER_MODEL:-$MODEL}"  # the local teacher's checkpoint
PROMPTS="${PROMPTS:-data/toy/train.jsonl}"
EVAL_DATA="${EVAL_DATA:-data/toy/test.jsonl}"
DISTILL_DATA="${DISTILL_DATA:-$PROMPTS}"  # prompts without answers keep every trace unfiltered
OUT="${OUT:-runs/pipeline}"
LIMIT="${LIMIT:-16}"                      # prompts per stage (the demo keeps this small)
STEPS="${STEPS:-4}"                       # optimizer steps per training stage
TOKENS="${TOKENS:-96}"                    # completion length cap
CF="${CHAINFORGE:-chainforge}"

mkdir -p "$OUT"

# Stage 0: the reasoning data. The teacher's chain of thought, split into steps, with uncertain
# steps grounded by the expander — the Super CoT traces the cold start learns the format from.
$CF collect --prompts "$PROMPTS" --output "$OUT/00-collect" --teacher "$TEACHER" \
  --teacher-model "$TEACHER_MODEL" --limit "$LIMIT" --max-new-tokens "$TOKENS"

# Stage 1: cold-start SFT. RL from a base model that has never seen the format wastes its first
# thousand steps discovering it (R1-Zero); a little SFT on traces gives it the format up front.
$CF sft --model "$MODEL" --data "$OUT/00-collect" --output "$OUT/01-sft-cold" --max-steps "$STEPS" --all-rows

# Stage 2: reasoning RL. Verifiable rewards (correct answer, well-formed format, grounded
# expansions) push the policy towards answers that check out, not answers that look right.
$CF grpo --model "$OUT/01-sft-cold" --data "$PROMPTS" --output "$OUT/02-rl" --max-steps "$STEPS" \
  --limit "$LIMIT" --num-generations 4 --max-new-tokens "$TOKENS"

# Stage 3: rejection sampling. The RL model's own best answers are cleaner SFT data than the
# teacher's: same distribution as the policy, and every kept row passed the reward check.
rc=0
$CF reject --model "$OUT/02-rl" --data "$PROMPTS" --output "$OUT/03-reject" --limit "$LIMIT" \
  --num-samples 4 --max-new-tokens "$TOKENS" --min-reward 0.2 || rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 1 ]; then exit "$rc"; fi
[ "$rc" -eq 1 ] && echo "reject stopped (exit 1: nothing passed?); stage 3b falls back to the collected data"

# Stage 3b: additional SFT on the kept answers (falls back to the collected traces if reject kept
# none — a weak model may pass no prompt at all).
SFT_DATA="$OUT/03-reject"
[ -f "$SFT_DATA/state.json" ] || SFT_DATA="$OUT/00-collect"
$CF sft --model "$OUT/02-rl" --data "$SFT_DATA" --output "$OUT/04-sft-more" --max-steps "$STEPS" --all-rows

# Stage 4: a last round of RL from the better-initialised policy.
$CF grpo --model "$OUT/04-sft-more" --data "$PROMPTS" --output "$OUT/05-rl-final" --max-steps "$STEPS" \
  --limit "$LIMIT" --num-generations 4 --max-new-tokens "$TOKENS"

# Stage 5: distillation. Serving wants a small model; training the student on the RL model's
# traces carries the reasoning over (the R1-Distill recipe).
$CF distill --teacher "$OUT/05-rl-final" --student "$STUDENT" --data "$DISTILL_DATA" --output "$OUT/06-distill" \
  --limit "$LIMIT" --max-steps "$STEPS" --max-new-tokens "$TOKENS"

# Did any of it help? Held-out accuracy of the final policy and of the student.
$CF eval --model "$OUT/05-rl-final" --data "$EVAL_DATA" --output "$OUT/07-eval-final" --limit "$LIMIT" \
  --max-new-tokens "$TOKENS"
$CF eval --model "$OUT/06-distill" --data "$EVAL_DATA" --output "$OUT/08-eval-student" --limit "$LIMIT" \
  --max-new-tokens "$TOKENS"
$CF report "$OUT"
