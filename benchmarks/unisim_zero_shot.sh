#!/bin/bash
# UniSim's zero-shot row (issue 27): per seed, diamond-cpu trained in the real two-rooms-discrete,
# then the same actor-critic trained for as many updates only inside the UniSim run's
# instruction-conditioned model (`wmlab pipeline unisim --match-baseline`), both and random play
# evaluated on the same 50 episodes (seeds 1,000,000 + i). Usage (from the repository root), after
# benchmarks/unisim_small.sh has trained $UNISIM:
#   UNISIM=logs/unisim/run STEPS=4500 SEEDS="0 1 2" OUT=logs/unisim-zero-shot benchmarks/unisim_zero_shot.sh
# STEPS environment steps of diamond-cpu = (STEPS - 500) / 4 world-model updates, 250 fewer of its actor-critic.
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD OMP_NUM_THREADS=1
PY=${PYTHON:-python}
UNISIM=${UNISIM:-logs/unisim/run}; STEPS=${STEPS:-4500}; SEEDS=${SEEDS:-0 1 2}; OUT=${OUT:-logs/unisim-zero-shot}
EPISODES=${EPISODES:-50}; GUIDANCE=${GUIDANCE:-1}
SKIP=${SKIP:-0}  # 1: diamond-cpu's reward-end head also reads its features past the LSTM (as unisim_small.sh's SKIP)
REWARD_MIDDLE=${REWARD_MIDDLE:-0}  # diamond-cpu's reward-end middle attention blocks (as unisim_small.sh's REWARD_MIDDLE)
BASELINES=${BASELINES:-}  # an earlier OUT: reuse its real-env agents (diamond-seedS) instead of training them again
ENV_KWARGS=${ENV_KWARGS:-{\}}  # as the simulator's recording (benchmarks/unisim_small.sh), e.g. '{"reward": "dense"}'
set -e
for SEED in $SEEDS; do
  BASELINE=${BASELINES:-$OUT}/diamond-seed$SEED
  [ -n "$BASELINES" ] || $PY -m wmlab.cli train --algo diamond-cpu --env two-rooms-discrete --env-kwargs "$ENV_KWARGS" --run-dir $OUT/diamond-seed$SEED --force \
    --train.seed $SEED --train.batch-size 8 --train.sequence-length 19 --train.train-ratio 38 \
    $([ "$SKIP" = 1 ] && echo --agent.model.reward-end.feature-skip) \
    --agent.model.reward-end.middle-blocks $REWARD_MIDDLE \
    --train.learning-starts 500 --train.steps $STEPS --train.eval-every 0 --train.threads 1 --train.no-progress
  $PY -m wmlab.cli pipeline unisim --run $UNISIM --out $OUT/zero-shot-seed$SEED --seed $SEED --force \
    --env-kwargs "$ENV_KWARGS" --baseline $BASELINE --match-baseline --episodes $EPISODES --guidance $GUIDANCE
done
$PY - "$OUT" $SEEDS <<'PY'
import json, sys
out, seeds = sys.argv[1], sys.argv[2:]
print("| seed | actor-critic updates | zero-shot success / return | diamond-cpu (real env) | random |")
print("|---|---|---|---|---|")
for seed in seeds:
    r = json.load(open(f"{out}/zero-shot-seed{seed}/result.json"))
    cell = lambda m: f"{m['eval/success']:.2f} / {m['eval/return']:.3f}"
    print(f"| {seed} | {r['updates']} | {cell(r['zero_shot'])} | {cell(r['baseline'])} | {cell(r['random'])} |")
PY
