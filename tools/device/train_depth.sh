#!/usr/bin/env bash
# On the device: bash tools/device/train_depth.sh END_UNIX_TIME STEPS OUTPUT_DIR ARMS SEEDS
# Trains every (arm, seed) side by side (--jobs) with the depth_800 schedule lengthened to STEPS, until END (each run
# stops with a checkpoint; the same command resumes it while the machine is warm). Worker logs go to $OUT.
set -u
end=$1 steps=$2 out=$3 arms=$4 seeds=$5
jobs=$(( $(tr ',' '\n' <<< "$arms" | wc -l) * $(tr ',' '\n' <<< "$seeds" | wc -l) ))
python3 -m experiments depth --config experiments/configs/depth_800.yaml --steps "$steps" --train_only \
  --tokenizer .gpu/smollm2-tokenizer --compile_thoughts default --time_limit_s $(( end - $(date +%s) )) \
  --arms "$arms" --seeds "$seeds" --jobs "$jobs" --output_dir "$out" > "${OUT:?}/driver_$(basename "$out").log" 2>&1
cp "$out"/logs/*.log "$OUT"/ 2>/dev/null
# With one run there is no worker: its training logs into the driver's log.
for log in "$out"/logs/*.log "$OUT/driver_$(basename "$out").log"; do
  [ -f "$log" ] || continue
  echo "== $log"
  grep -o "{'loss'[^}]*}" "$log" | tail -1 | cut -c1-300
  grep -E "stopped at step|Error" "$log" | tail -2
done
