#!/usr/bin/env bash
# Train, or continue, the three shipped CPU models (issue 6) one after the other:
# Meta-QSM over the whole geometry range, then the two Mesa-QSM baselines at
# 0.5 x 0.5 x 2.0 mm and 0.7639 x 0.7639 x 3.0 mm, each to the same number of steps.
#
#   nohup bash training/train-cpu.sh > runs/train-cpu.log 2>&1 &      # STEPS=3000 to go further
#   MODELS=meta STEPS=3000 nohup bash training/train-cpu.sh ...         # one model only
#
# The training patches are simulated with no sources outside the patch (configs/synth-margin0.json:
# margin_mm = 0, the field zero-padded): the network then learns the problem it meets at
# inference, a whole brain whose every source is inside the volume (docs/training.md).
#
# Checkpoint selection: best.safetensors is the step with the lowest RMSE over 4 whole synthetic
# volumes of 128 x 128 x 64 (run.val_volumes, run.select_by), not over the 64 x 64 x 32 patches,
# of the moving average of the weights (run.ema_decay = 0.99), not of the raw weights.
#
# Resumable at every level: a data set that exists is not regenerated (same seed, same samples);
# a run folder with last.pt continues from it; otherwise the state committed at the end of the
# last session (training/NAME/last.pt.gz) is restored; otherwise the run starts fresh.
# Stop with `pkill -TERM -f "metaqsm train"`: the current run checkpoints and the script moves on
# (run it again to continue).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-/work/data}
STEPS=${STEPS:-800}
MODELS=${MODELS:-meta mesa-0.5x0.5x2 mesa-0.7639x0.7639x3}  # e.g. MODELS=meta: that one only
mkdir -p "$DATA" runs
source training/restore.sh

synth() {  # synth DIR SEED N VOXEL-SIZE-RANGE(6) TILT
  local dir=$1 seed=$2 n=$3 tilt=${10}
  if [ ! -f "$dir/synth.h5" ]; then
    metaqsm synth -n "$n" -o "$dir" --split 0.9 --seed "$seed" --patch 64 64 32 \
      --config configs/synth-margin0.json \
      --voxel-size-range "$4" "$5" "$6" "$7" "$8" "$9" --max-tilt "$tilt" --workers 2 2> >(grep -v "it/s\|s/it" >&2)
  fi
}

train() {  # train NAME CONFIG DATA
  local name=$1 config=$2 data=$3 out=runs/$1
  restore_state "training/$name" "$out"
  if [ -f "$out/last.pt" ]; then
    # runs begun before whole-volume validation and the weight average get them on resume (as the configs)
    metaqsm train --out "$out" --resume --steps "$STEPS" --no-progress \
      run.val_volumes=4 'run.select_by="vol_rmse"' run.ema_decay=0.99 || true
  else
    metaqsm train --config "$config" --data "$data/synth.h5" --out "$out" --steps "$STEPS" \
      --no-progress || true
  fi
}

# each model's data set just before its run (about 5-12 minutes each on 2 cores)
want() { [[ " $MODELS " == *" $1 "* ]]; }
if want meta; then
  synth "$DATA/meta-m0" 1 1600 0.5 1.2 0.5 1.2 0.5 4.0 30
  train meta configs/cpu.toml "$DATA/meta-m0"
fi
if want mesa-0.5x0.5x2; then
  synth "$DATA/mesa-0.5x0.5x2-m0" 2 800 0.5 0.5 0.5 0.5 2.0 2.0 0
  train mesa-0.5x0.5x2 configs/cpu-mesa-0.5x0.5x2.toml "$DATA/mesa-0.5x0.5x2-m0"
fi
if want mesa-0.7639x0.7639x3; then
  synth "$DATA/mesa-0.7639x0.7639x3-m0" 3 800 0.7639 0.7639 0.7639 0.7639 3.0 3.0 0
  train mesa-0.7639x0.7639x3 configs/cpu-mesa-0.7639x0.7639x3.toml "$DATA/mesa-0.7639x0.7639x3-m0"
fi
echo "train-cpu.sh: $MODELS at $STEPS steps"
