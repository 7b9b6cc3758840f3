#!/usr/bin/env bash
# Stage 2 of the CPU recipe (docs/training.md, 'Two stages') for the three shipped models, one
# after the other and with the same number of steps: each starts from its stage-1 weights
# (run.init_weights in its config: training/NAME/stage1.safetensors) and trains on streamed 128 x 128 x 64 patches, batch 1.
#
#   STEPS=200 nohup bash training/train-stage2.sh > runs/train-stage2.log 2>&1 &
#   MODELS=meta STEPS=200 ...                                  # one model only
#
# Resumable: a run folder with last.pt continues from it; otherwise the state committed at the
# end of a session (training/NAME-ft128/last.pt.gz, publish.py --state-only) is restored;
# otherwise the run starts fresh from the stage-1 weights.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-200}
MODELS=${MODELS:-meta mesa-0.5x0.5x2 mesa-0.7639x0.7639x3}
mkdir -p runs
source training/restore.sh

config_of() { if [ "$1" = meta ]; then echo configs/cpu-ft128.toml; else echo "configs/cpu-$1-ft128.toml"; fi; }

for name in $MODELS; do
  out=runs/$name-ft128 state=training/$name-ft128
  restore_state "$state" "$out"
  if [ -f "$out/last.pt" ]; then
    metaqsm train --out "$out" --resume --steps "$STEPS" --no-progress || true
  else
    metaqsm train --config "$(config_of "$name")" --out "$out" --steps "$STEPS" --no-progress || true
  fi
done
echo "train-stage2.sh: $MODELS at $STEPS steps"
