#!/usr/bin/env bash
# Resume the training of the shipped Meta-QSM model (issue 6) where the last session stopped.
#
#   bash training/resume-meta.sh            # in the background: nohup bash training/resume-meta.sh &
#
# 1. (Re)generates the training set if it is missing (deterministic: same seed, same samples).
# 2. Restores runs/meta/last.pt from training/meta/last.pt.gz (committed at the end of each
#    session) unless runs/meta already holds a newer state.
# 3. Continues `metaqsm train --resume` up to STEPS (default 20000).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-/work/data/meta-cpu}
STEPS=${STEPS:-20000}
if [ ! -f "$DATA/synth.h5" ]; then
  metaqsm synth -n 2000 -o "$DATA" --split 0.9 --seed 1 --patch 64 64 32 \
    --voxel-size-range 0.5 1.2 0.5 1.2 0.5 4.0 --max-tilt 30 --workers 2
fi
mkdir -p runs/meta
if [ ! -f runs/meta/last.pt ]; then
  gunzip -c training/meta/last.pt.gz > runs/meta/last.pt
  cp training/meta/config.json training/meta/log.csv runs/meta/
fi
# the data path is part of the saved configuration ($DATA/synth.h5 = /work/data/meta-cpu/synth.h5)
exec metaqsm train --out runs/meta --resume --steps "$STEPS" --no-progress
