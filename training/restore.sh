# Sourced by train-cpu.sh and train-stage2.sh.
# restore_state STATE OUT: when OUT holds no run yet, restore the state committed at the end of a
# session (STATE/last.pt.gz with its config.json and log.csv, publish.py) into OUT, with the best
# candidate so far when the state was kept without publishing (publish.py --state-only).
restore_state() {
  local state=$1 out=$2
  if [ ! -f "$out/last.pt" ] && [ -f "$state/last.pt.gz" ]; then
    mkdir -p "$out"
    gunzip -c "$state/last.pt.gz" > "$out/last.pt"
    cp "$state/config.json" "$state/log.csv" "$out/"
    if [ -f "$state/best.safetensors" ]; then cp "$state/best.safetensors" "$out/"; fi
  fi
}
