# Session 21's calls, one script: bash .gpu/s21.sh SECONDS (after `source tools/device/setup.sh`). Send it again, at
# once, until it prints "all done": each call goes on from what the warm machine holds (a cold one starts over).
#
# Needed for the 3-seed table of session 20's recipe (from scratch, 1200 steps, the last stage decayed): TRM seed 2
# and pause seeds 1-2 (`trm_jacobi_own_snap_decay`, `pause_forced_lm_own_snap_decay`, depth_800.yaml). Beside them,
# as memory allows (a stage-4 TRM holds about 31 GB, a pause run about 12): `cot_partial` seed 0 always (written
# reasoning on partial questions: does a last step that is not the last instruction let it pass four steps? It needs
# depth.yaml's 128 new tokens; without a curriculum its 1200 steps are depth_800's), and where the GPU holds more
# than 100 GB `trm_jacobi_own_snap_decay_partial` and `trm_jacobi_own_snap_decay_padded` seed 0. Each group trains
# side by side in its own harness process and output folder (/tmp/<arm>); each finished model is evaluated by the
# harness, one process per model; evals.tgz brings every evaluation back.
# Sizes for a smoke run on a CPU: CONFIG, CONFIG_COT, STEPS, TOKENIZER, LAST_TEST, LAST_TEST_COT, EXTRAS (0 or 1).
set -u
end=$(( $(date +%s) + $1 ))
config=${CONFIG:-experiments/configs/depth_800.yaml} config_cot=${CONFIG_COT:-experiments/configs/depth.yaml}
steps=${STEPS:-1200} tokenizer=${TOKENIZER:-.gpu/smollm2-tokenizer}
memory=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
extras=${EXTRAS:-$([ "${memory:-0}" -gt 100000 ] && echo 1 || echo 0)}
# ARM SEEDS CONFIG LAST_TEST (the harness's last test of the arm: curriculum arms end with the given-steps tests)
groups=("trm_jacobi_own_snap_decay 2 $config ${LAST_TEST:-depth6-given6}"
        "pause_forced_lm_own_snap_decay 1,2 $config ${LAST_TEST:-depth6-given6}"
        "cot_partial 0 $config_cot ${LAST_TEST_COT:-depth6}")
if [ "$extras" = 1 ]; then
  groups+=("trm_jacobi_own_snap_decay_partial 0 $config ${LAST_TEST:-depth6-given6}"
           "trm_jacobi_own_snap_decay_padded 0 $config ${LAST_TEST:-depth6-given6}")
fi
export OMP_NUM_THREADS=2  # several host-bound trainings share 16 cores
left() { echo $(( end - $(date +%s) - $1 )); }
harness() {  # SECONDS CONFIG OUTPUT_DIR LOG_NAME ARGS... (nothing once the time is up: `timeout 0` has no limit)
  local limit=$1 cfg=$2 out=$3 log=$4; shift 4
  [ "$limit" -gt 0 ] || return 1
  timeout "$limit" python3 -m experiments depth --config "$cfg" --tokenizer "$tokenizer" --compile_thoughts default \
    --steps "$steps" --output_dir "$out" "$@" >> "$OUT/driver_$log.log" 2>&1
}
finished() { [ -f "/tmp/$1/models/$1/seed$2/final/README.md" ]; }  # ARM SEED
evaluated() { [ -f "/tmp/$1/evals/$1/seed$2/$3/results.json" ]; }  # ARM SEED LAST_TEST
train() {  # ARM SEEDS CONFIG: side by side until the call's end less a minute (a rerun resumes)
  local seed todo=0
  for seed in ${2//,/ }; do finished "$1" "$seed" || todo=1; done
  [ $todo = 0 ] || harness "$(left 30)" "$3" "/tmp/$1" "train_$1" --train_only --arms "$1" --seeds "$2" \
    --jobs "$(tr ',' '\n' <<< "$2" | wc -l)" --time_limit_s "$(left 60)"
  cp /tmp/"$1"/logs/*.log "$OUT"/ 2>/dev/null
}
evaluate() {  # ARM SEEDS CONFIG LAST_TEST: one harness process per finished model, side by side
  local seed
  for seed in ${2//,/ }; do
    if finished "$1" "$seed" && ! evaluated "$1" "$seed" "$4"; then
      harness "$(left 20)" "$3" "/tmp/$1" "eval_$1_s$seed" --arms "$1" --seeds "$seed" &
    fi
  done
  wait
}

for group in "${groups[@]}"; do train $group & done; wait
for group in "${groups[@]}"; do evaluate $group & done; wait

for log in "$OUT"/*-seed*.log "$OUT"/driver_train_*.log; do  # a lone run logs into its driver's log
  [ -f "$log" ] && echo "== $log: $(grep -o "{'loss'[^}]*}" "$log" | tail -1 | cut -c1-150)"
done
done_count=0 wanted=0 folders=()
for group in "${groups[@]}"; do
  read -r arm seeds _ last <<< "$group"
  [ -d "/tmp/$arm/evals" ] && folders+=("$arm/evals")
  [ -f "/tmp/$arm/results.md" ] && grep -A3 "^| arm | depth 1" "/tmp/$arm/results.md" | head -4
  for seed in ${seeds//,/ }; do
    wanted=$((wanted + 1)); evaluated "$arm" "$seed" "$last" && done_count=$((done_count + 1))
  done
done
[ ${#folders[@]} -gt 0 ] && tar czf "$OUT/evals.tgz" -C /tmp "${folders[@]}"
(cd "$OUT" && compgen -G "*.log" > /dev/null && tar czf logs.tgz ./*.log && rm -f ./*.log)
echo "models evaluated: $done_count of $wanted (extras: $extras)"
[ $done_count = $wanted ] && echo "all done"
