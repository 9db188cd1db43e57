#!/bin/bash
# UniSim in small (issue 27): captioned two-rooms -> instruction dataset -> offline diffusion model
# conditioned on text -> wmlab generate --text at guidance 1 and 3. Usage (from the repository root):
#   EPISODES=100 LIMIT=420 OUT=logs/unisim benchmarks/unisim_small.sh
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD OMP_NUM_THREADS=1
PY=${PYTHON:-python}
EPISODES=${EPISODES:-100}; LIMIT=${LIMIT:-420}; OUT=${OUT:-logs/unisim}
FOREGROUND=${FOREGROUND:-0}  # the denoiser's foreground pixel weight (diamond-cpu: 20); 0: off, as measured
SPARSE=${SPARSE:-1}  # weight of reward / end steps in the reward-end model's losses (diamond-cpu: 10); 1: plain, as measured
SKIP=${SKIP:-0}  # 1: the reward-end head also reads the encoder's features past the LSTM (feature_skip); 0: DIAMOND's
ENV_KWARGS=${ENV_KWARGS:-{\}}  # two-rooms options of the recording, e.g. '{"reward": "dense"}' (the zero-shot row needs the same)
REWARD_MIDDLE=${REWARD_MIDDLE:-0}  # the reward-end encoder's middle attention blocks (DIAMOND: 2); 0: as measured before 2026-12-07
WEIGHT_DECAY=${WEIGHT_DECAY:-0}  # AdamW's decoupled weight decay (DIAMOND: 0.01); 0: Adam, as measured before 2026-12-07 15:50
DECAY_PARTS=${DECAY_PARTS:-}  # the model's parts that WEIGHT_DECAY applies to, e.g. reward_end; empty: every parameter
CLIP_PARTS=${CLIP_PARTS:-}  # the model's parts whose gradient norm is clipped on its own, e.g. reward_end; empty: one global norm
STANDARDIZE=${STANDARDIZE:-0}  # 1: the instruction embedding standardised per dimension (condition_standardize); 0: as measured before 2026-12-07 21:00
UPDATES=${UPDATES:-100000}  # at most this many updates (LIMIT seconds bound the run too)
RECORD=${RECORD:-1}  # 0: reuse $OUT/instructions as it is (same EPISODES and ENV_KWARGS)
set -e
if [ "$RECORD" = 1 ]; then
  $PY -m wmlab.data.instructions $OUT/captioned $OUT/instructions --record $EPISODES --seed 0 --env-kwargs "$ENV_KWARGS" --force
fi
$PY -m wmlab.cli train --model diffusion --dataset $OUT/instructions --run-dir $OUT/run --force \
  --world-model.channels 16 16 32 32 --world-model.depths 1 1 1 1 --world-model.condition-size 64 --world-model.middle-blocks 0 --world-model.no-skip-every-block --world-model.action-projection \
  --world-model.reward-end.channels 8 8 16 16 --world-model.reward-end.depths 1 1 1 1 --world-model.reward-end.middle-blocks $REWARD_MIDDLE \
  --world-model.reward-end.condition-size 32 --world-model.reward-end.lstm-size 128 \
  $([ "$SKIP" = 1 ] && echo --world-model.reward-end.feature-skip) \
  --world-model.condition-size-input 384 --world-model.condition-dropout 0.1 $([ "$STANDARDIZE" = 1 ] && echo --world-model.condition-standardize) \
  --world-model.loss-scales.foreground $FOREGROUND --world-model.loss-scales.sparse-weight $SPARSE \
  --train.batch-size 8 --train.sequence-length 8 --train.learning-rate 3e-4 --train.grad-clip 1 --train.weight-decay $WEIGHT_DECAY \
  $([ -n "$DECAY_PARTS" ] && echo --train.weight-decay-parts $DECAY_PARTS) $([ -n "$CLIP_PARTS" ] && echo --train.grad-clip-parts $CLIP_PARTS) \
  --train.updates $UPDATES --train.time-limit $LIMIT --train.seed 0 --train.threads 1 --train.no-progress --train.log-every 25
for TEXT in "move left" "move right" "move up" "move down"; do
  for W in 1 3; do
    $PY -m wmlab.cli generate $OUT/run --steps 12 --actions random --text "$TEXT" --guidance $W --seed 0 \
      --out "$OUT/generated/${TEXT// /_}_w$W.mp4"
  done
done
