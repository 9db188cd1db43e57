#!/usr/bin/env bash
# Set up the separate benchmark environment with SheepRL, for the DreamerV3 speed comparison
# (benchmarks/dreamer_speed.py --sheeprl-python .bench/sheeprl-venv/bin/python) and the laptop-budget
# peer row (benchmarks/sheeprl_laptop.py).
#
#     bash benchmarks/sheeprl_setup.sh            # or: VENV=/some/where bash benchmarks/sheeprl_setup.sh
#
# Idempotent: an existing, complete environment (stamp file) is left as it is; delete the folder
# to rebuild it. The environment lives outside the project's tracked files (.bench/ is ignored).
#
# Steps, in this order on purpose:
#   1. a plain venv from the same python as the project's;
#   2. torch FIRST, pinned to the project's version (2.13.0); pip's configured find-links folder
#      holds the CPU build, so this does not pull the CUDA wheels;
#   3. sheeprl (the version issue 4 names, 0.8.4) with a constraints file that pins torch (and
#      mujoco, as the project's constraints.txt does), so that no dependency upgrades torch.
# sheeprl 0.8.4's own requirements (gymnasium[classic-control], lightning, hydra-core, torchmetrics,
# tensorboard, moviepy, opencv-python, rich, python-dotenv, numpy) resolve against torch 2.13.0
# without conflict, so no --no-deps workaround is needed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.bench/sheeprl-venv}"
PYTHON="${PYTHON:-python3}"
TORCH="${TORCH:-torch==2.13.0}"
SHEEPRL="${SHEEPRL:-sheeprl==0.8.4}"
# dm_control for the DMC tasks of the laptop-budget peer row (benchmarks/sheeprl_laptop.py).
EXTRAS="${EXTRAS:-dm_control}"
STAMP="$VENV/.installed"

if [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$TORCH $SHEEPRL $EXTRAS" ]]; then
    echo "sheeprl benchmark environment ready: $VENV"
    exit 0
fi

mkdir -p "$(dirname "$VENV")"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"

"$PY" -m pip install --quiet "$TORCH"

# The torch pin comes from the torch just installed (so TORCH=... with a local build stays
# consistent), plus the project's own pins.
{
    grep -v '^\s*#' "$ROOT/constraints.txt" | grep -v '^\s*$' || true
    "$PY" -W ignore -c "import torch; print('torch==' + torch.__version__.split('+')[0])"
} > "$VENV/constraints.txt"

"$PY" -m pip install --quiet -c "$VENV/constraints.txt" "$SHEEPRL" $EXTRAS

"$PY" - <<'EOF'
import sheeprl, torch
from sheeprl.algos.dreamer_v3 import dreamer_v3, agent  # noqa: F401  (imports must work)
print(f"sheeprl {sheeprl.__version__}, torch {torch.__version__}")
EOF
echo "$TORCH $SHEEPRL $EXTRAS" > "$STAMP"
echo "sheeprl benchmark environment ready: $VENV"
