# Session 20's calls, one script: bash .gpu/s20.sh SECONDS (after `source tools/device/setup.sh`). Send it again, at
# once, until it prints "all done": each call goes on from what the warm machine holds (a cold one starts over).
#
# Session 19's models were lost with the machine that held them, so the recipe that won on seed 0 is trained from
# scratch for every seed, in one run each: `trm_jacobi_own_snap_decay` (depth_800.yaml's curriculum, 160 steps per
# stage 0-3, then the last stage to step 1200 with its learning rate decayed over the second half) beside its matched
# pause control `pause_forced_lm_own_snap_decay` (the same curriculum, losses and schedule): TRM seeds 0-2 and pause
# seeds 0-1 side by side where the GPU holds more than 100 GB; otherwise (an H100: a stage-4 TRM holds about 31 GB)
# TRM seeds 0-1 and pause seed 0. Each finished model is then evaluated by the harness (every test depth, the n_cycles and N_sup sweeps,
# the ablations and the given latent steps), one process per model, into DIR/evals; evals.tgz brings them back.
# Sizes for a smoke run on a CPU: CONFIG, STEPS, TOKENIZER, SEEDS_TRM, SEEDS_PAUSE, LAST_TEST.
set -u
end=$(( $(date +%s) + $1 ))
config=${CONFIG:-experiments/configs/depth_800.yaml} steps=${STEPS:-1200} tokenizer=${TOKENIZER:-.gpu/smollm2-tokenizer}
trm=trm_jacobi_own_snap_decay pause=pause_forced_lm_own_snap_decay
memory=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
if [ "${memory:-0}" -gt 100000 ]; then seeds_trm=0,1,2 seeds_pause=0,1; else seeds_trm=0,1 seeds_pause=0; fi
seeds_trm=${SEEDS_TRM:-$seeds_trm} seeds_pause=${SEEDS_PAUSE:-$seeds_pause}
export OMP_NUM_THREADS=2  # six host-bound trainings share 16 cores
left() { echo $(( end - $(date +%s) - $1 )); }
harness() {  # SECONDS OUTPUT_DIR LOG_NAME ARGS...
  local limit=$1 out=$2 log=$3; shift 3
  timeout "$limit" python3 -m experiments depth --config "$config" --tokenizer "$tokenizer" --compile_thoughts default \
    --steps "$steps" --output_dir "$out" "$@" >> "$OUT/driver_$log.log" 2>&1
}
finished() { [ -f "$1/models/$2/seed$3/final/README.md" ]; }  # OUTPUT_DIR ARM SEED
evaluated() { [ -f "$1/evals/$2/seed$3/${LAST_TEST:-depth6-given6}/results.json" ]; }  # the harness's last test
train() {  # OUTPUT_DIR ARM SEEDS: side by side until the call's end less a minute (a rerun resumes)
  local seed todo=0
  for seed in ${3//,/ }; do finished "$1" "$2" "$seed" || todo=1; done
  [ $todo = 0 ] || harness "$(left 30)" "$1" "train_$2" --train_only --arms "$2" --seeds "$3" \
    --jobs "$(tr ',' '\n' <<< "$3" | wc -l)" --time_limit_s "$(left 60)"
  cp "$1"/logs/*.log "$OUT"/ 2>/dev/null
}
evaluate() {  # OUTPUT_DIR ARM SEEDS: one harness process per finished model, side by side
  local seed
  for seed in ${3//,/ }; do
    if finished "$1" "$2" "$seed" && ! evaluated "$1" "$2" "$seed"; then
      harness "$(left 20)" "$1" "eval_$2_s$seed" --arms "$2" --seeds "$seed" &
    fi
  done
  wait
}

train /tmp/trm $trm $seeds_trm & train /tmp/pause $pause $seeds_pause & wait
evaluate /tmp/trm $trm $seeds_trm & evaluate /tmp/pause $pause $seeds_pause & wait

for log in "$OUT"/*-seed*.log; do
  [ -f "$log" ] && echo "== $log: $(grep -o "{'loss'[^}]*}" "$log" | tail -1 | cut -c1-150)"
done
for dir in /tmp/trm /tmp/pause; do
  [ -f $dir/results.md ] && grep -A4 "depth 4\|| arm" $dir/results.md | head -12
done
tar czf "$OUT/evals.tgz" -C /tmp trm/evals pause/evals 2>/dev/null
(cd "$OUT" && compgen -G "*.log" > /dev/null && tar czf logs.tgz ./*.log && rm -f ./*.log)
done_count=0 wanted=0
for seed in ${seeds_trm//,/ }; do wanted=$((wanted + 1)); evaluated /tmp/trm $trm "$seed" && done_count=$((done_count + 1)); done
for seed in ${seeds_pause//,/ }; do wanted=$((wanted + 1)); evaluated /tmp/pause $pause "$seed" && done_count=$((done_count + 1)); done
echo "models evaluated: $done_count of $wanted (TRM seeds $seeds_trm, pause seeds $seeds_pause)"
[ $done_count = $wanted ] && echo "all done"
