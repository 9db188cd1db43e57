#!/bin/bash
# The laptop rows of issues 26 and 27 on Atari 100k games: 2 hours of one core per run, the CPU
# preset, 64 x 64 frames, episodes that end at a lost life in training and whole games in
# evaluation (as IRIS's and DIAMOND's). Two runs share the 2 cores; start them side by side:
#   ALGO=iris-cpu GAME=Pong SEED=0 OUT=logs/atari benchmarks/atari_laptop.sh &
#   ALGO=iris-cpu GAME=Pong SEED=1 OUT=logs/atari benchmarks/atari_laptop.sh &
# A run cut short (a session's end, a reboot) continues where its last checkpoint left it when the
# same command is run again: the time limit counts over all its pieces. CHECKPOINT sets how many
# environment steps a cut may lose (default 2500; every checkpoint also writes the new replay).
# The agent's weights are kept every KEEP steps (default 2500) in RUN/kept/step-N; then the
# protocol's return of each (IRIS: temperature 0.5; DIAMOND: 1):
#   python benchmarks/imagination_diagnosis.py evaluate RUN/kept/step-N --episodes 20 --temperatures 0.5 --out eval.json
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD OMP_NUM_THREADS=1
PY=${PYTHON:-python}
ALGO=${ALGO:-iris-cpu}; GAME=${GAME:-Pong}; SEED=${SEED:-0}; OUT=${OUT:-logs/atari}; LIMIT=${LIMIT:-7200}
CHECKPOINT=${CHECKPOINT:-2500}; KEEP=${KEEP:-2500}; RUN=$OUT/$ALGO-$GAME-seed$SEED
case $ALGO in
  iris-cpu) SHAPE="--train.batch-size 8 --train.sequence-length 10 --train.train-ratio 20" ;;
  diamond-cpu) SHAPE="--train.batch-size 8 --train.sequence-length 19 --train.train-ratio 38" ;;
  *) echo "ALGO must be iris-cpu or diamond-cpu" >&2; exit 2 ;;
esac
if [ -f $RUN/config.json ]; then
  exec $PY -m wmlab.cli train --resume $RUN --train.no-progress
fi
exec $PY -m wmlab.cli train --algo $ALGO --env atari:$GAME --run-dir $RUN \
  --env-kwargs '{"terminal_on_life_loss": true}' --eval-env-kwargs '{"terminal_on_life_loss": false}' \
  $SHAPE --train.seed $SEED --train.learning-starts 1000 --train.time-limit $LIMIT --train.steps 100000 \
  --train.eval-every 2500 --train.eval-episodes 5 --train.checkpoint-every $CHECKPOINT --train.keep-every $KEEP --train.threads 1 \
  --train.no-progress --train.log-every 250 ${EXTRA:-}
