#!/usr/bin/env bash
# Start, or resume after any stop, the background CPU training of Meta-QSM 2 (meta-unrolled):
# low priority (nice 10), one thread, log in runs/meta-unrolled/train.out; config and log copies
# in training/meta-unrolled/ (copied at every start; run it again to refresh them).
#   training/train-meta-unrolled.sh          start or resume
#   kill $(cat runs/meta-unrolled/pid)       stop (SIGTERM: it checkpoints and exits)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=runs/meta-unrolled
COPY=training/meta-unrolled
mkdir -p "$RUN" "$COPY"
cp configs/meta-unrolled.toml "$COPY/config.toml"
[ -f "$RUN/log.csv" ] && cp "$RUN/log.csv" "$COPY/log.csv"
if [ -f "$RUN/pid" ] && kill -0 "$(cat "$RUN/pid")" 2>/dev/null; then
    echo "already running (pid $(cat "$RUN/pid"))"; exit 0
fi
RESUME=""
[ -f "$RUN/last.pt" ] && RESUME="--resume"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
nohup nice -n 10 python3 -m metaqsm.cli train --config configs/meta-unrolled.toml --out "$RUN" \
    $RESUME >>"$RUN/train.out" 2>&1 &
echo $! >"$RUN/pid"
echo "training ${RESUME:-started} in $RUN (pid $!, log $RUN/train.out, $RUN/log.csv)"
