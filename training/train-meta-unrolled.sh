#!/usr/bin/env bash
# Start, or resume after any stop, the background CPU training of Meta-QSM 2 (meta-unrolled):
# low priority (nice 10), one thread (THREADS=2 in the environment for two), log in
# runs/NAME/train.out; config and log copies
# in training/NAME/ (copied at every start; run it again to refresh them). NAME is the config
# configs/NAME.toml: meta-unrolled (default, the training from scratch), meta-unrolled-ssim,
# meta-unrolled-warmup or meta-unrolled-contrast (the contrast fine-tunes of the shipped
# network) or meta-unrolled-bank (the fine-tune on realistic heads: first fill the bank with
# training/make-head-bank.py runs/head-bank N).
#   training/train-meta-unrolled.sh [NAME]   start or resume runs/NAME
#   kill $(cat runs/NAME/pid)                stop (SIGTERM: it checkpoints and exits)
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${1:-meta-unrolled}
CONFIG=configs/$NAME.toml
[ -f "$CONFIG" ] || { echo "no configuration $CONFIG" >&2; exit 2; }
RUN=runs/$NAME
COPY=training/$NAME
mkdir -p "$RUN" "$COPY"
cp "$CONFIG" "$COPY/config.toml"
[ -f "$RUN/log.csv" ] && cp "$RUN/log.csv" "$COPY/log.csv"
if [ -f "$RUN/pid" ] && kill -0 "$(cat "$RUN/pid")" 2>/dev/null; then
    echo "already running (pid $(cat "$RUN/pid"))"; exit 0
fi
RESUME=""
[ -f "$RUN/last.pt" ] && RESUME="--resume"
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
nohup nice -n 10 python3 -m metaqsm.cli train --config "$CONFIG" --out "$RUN" \
    $RESUME >>"$RUN/train.out" 2>&1 &
echo $! >"$RUN/pid"
echo "training ${RESUME:-started} in $RUN (pid $!, log $RUN/train.out, $RUN/log.csv)"
