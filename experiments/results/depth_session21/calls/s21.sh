# The depth task's device calls since session 21, one script: bash .gpu/s21.sh SECONDS (after `source
# tools/device/setup.sh`). Send it again, at once, until it prints "all done": each call goes on from what the warm
# machine holds (a cold one starts over).
#
# The groups (PLAN, below) train side by side, each in its own harness process and output folder (/tmp/<arm>); each
# finished model is evaluated by the harness, one process per model; evals.tgz brings every evaluation back. Then
# bench/depth_answer.py times the answers on the idle GPU (TIMING=0: not). A stage-4 TRM of the recipe holds about
# 31 GB, the cycles arm about 24, a pause run about 12; EXTRAS=1 adds a plan's extra runs (for a GPU of more than
# 100 GB).
# Sizes for a smoke run on a CPU: CONFIG, CONFIG_COT, STEPS, PILOT_STEPS, TOKENIZER, LAST_TEST, LAST_TEST_COT.
# Session 21 sent PLAN=seeds, then pilot, then pause, as failed machine starts shrank its device time; session 22
# sent PLAN=cycles (experiments/results/depth_session2{1,2}/README.md); session 23's plan is spare. COT=0 leaves
# plan seeds' written-reasoning run out.
set -u
end=$(( $(date +%s) + $1 ))
config=${CONFIG:-experiments/configs/depth_800.yaml} config_cot=${CONFIG_COT:-experiments/configs/depth.yaml}
steps=${STEPS:-1200} tokenizer=${TOKENIZER:-.gpu/smollm2-tokenizer}
extras=${EXTRAS:-0}
# ARM SEEDS CONFIG LAST_TEST STEPS (LAST_TEST: the harness's last test of the arm; curriculum arms end with the
# given-steps tests)
last=${LAST_TEST:-depth6-given6}
pause="pause_forced_lm_own_snap_decay 1,2 $config $last $steps"
case "${PLAN:-spare}" in
  cycles)  # session 22's plan: the recipe's third seed, feedback_every_cycle from scratch beside it, the pause seeds
    groups=("trm_jacobi_own_snap_decay 2 $config $last $steps" "trm_jacobi_own_snap_decay_cycles 0 $config $last $steps"
            "$pause") ;;
  pilot)  # session 21 after 45 minutes of failed starts: the pause seeds and an 800-step pilot of the cycles arm
    groups=("$pause" "trm_jacobi_own_snap_decay_cycles 0 $config $last ${PILOT_STEPS:-800}") ;;
  pause) groups=("$pause") ;;  # one call
  seeds)  # session 21's first plan: the third seed, the pause seeds, written reasoning on partial questions
    groups=("trm_jacobi_own_snap_decay 2 $config $last $steps" "$pause")
    [ "${COT:-1}" = 1 ] && groups+=("cot_partial 0 $config_cot ${LAST_TEST_COT:-depth6} $steps") ;;
  spare)  # session 23's plan: two pilots on the cycles arm, spare latent steps and partial questions (seed 0
    # each); EXTRAS=1: the cycles arm's EXTRA_SEEDS beside them (seed 1: four TRMs would outrun three calls)
    groups=("trm_jacobi_own_snap_decay_cycles_spare 0 $config $last $steps"
            "trm_jacobi_own_snap_decay_cycles_partial 0 $config $last $steps")
    [ "$extras" = 1 ] && groups+=("trm_jacobi_own_snap_decay_cycles ${EXTRA_SEEDS:-1} $config $last $steps") ;;
  spare_alone)  # session 23 after two failed starts (1,349 s left): the spare pilot alone, two calls
    groups=("trm_jacobi_own_snap_decay_cycles_spare 0 $config $last $steps") ;;
  *) echo "PLAN must be spare, spare_alone, cycles, pilot, pause or seeds, got $PLAN"; exit 1 ;;
esac
if [ "$extras" = 1 ] && [ "${PLAN:-spare}" != spare ]; then
  groups+=("trm_jacobi_own_snap_decay_partial 0 $config $last $steps"
           "trm_jacobi_own_snap_decay_padded 0 $config $last $steps")
fi
export OMP_NUM_THREADS=2  # several host-bound trainings share 16 cores
left() { echo $(( end - $(date +%s) - $1 )); }
harness() {  # SECONDS CONFIG STEPS OUTPUT_DIR LOG_NAME ARGS... (nothing once the time is up: `timeout 0` has no limit)
  local limit=$1 cfg=$2 run_steps=$3 out=$4 log=$5; shift 5
  [ "$limit" -gt 0 ] || return 1
  timeout "$limit" python3 -m experiments depth --config "$cfg" --tokenizer "$tokenizer" --compile_thoughts default \
    --steps "$run_steps" --output_dir "$out" "$@" >> "$OUT/driver_$log.log" 2>&1
}
finished() { [ -f "/tmp/$1/models/$1/seed$2/final/README.md" ]; }  # ARM SEED
evaluated() { [ -f "/tmp/$1/evals/$1/seed$2/$3/results.json" ]; }  # ARM SEED LAST_TEST
train() {  # ARM SEEDS CONFIG LAST_TEST STEPS: side by side until the call's end less a minute (a rerun resumes)
  local seed todo=0
  for seed in ${2//,/ }; do finished "$1" "$seed" || todo=1; done
  [ $todo = 0 ] || harness "$(left 30)" "$3" "$5" "/tmp/$1" "train_$1" --train_only --arms "$1" --seeds "$2" \
    --jobs "$(tr ',' '\n' <<< "$2" | wc -l)" --time_limit_s "$(left 60)"
  cp /tmp/"$1"/logs/*.log "$OUT"/ 2>/dev/null
}
evaluate() {  # ARM SEEDS CONFIG LAST_TEST STEPS: one harness process per finished model, side by side
  local seed
  for seed in ${2//,/ }; do
    if finished "$1" "$seed" && ! evaluated "$1" "$seed" "$4"; then
      harness "$(left 20)" "$3" "$5" "/tmp/$1" "eval_$1_s$seed" --arms "$1" --seeds "$seed" &
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
  read -r arm seeds _ last _ <<< "$group"
  [ -d "/tmp/$arm/evals" ] && folders+=("$arm/evals")
  [ -f "/tmp/$arm/results.md" ] && grep -A3 "^| arm | depth 1" "/tmp/$arm/results.md" | head -4
  for seed in ${seeds//,/ }; do
    wanted=$((wanted + 1)); evaluated "$arm" "$seed" "$last" && done_count=$((done_count + 1))
  done
done
[ ${#folders[@]} -gt 0 ] && tar czf "$OUT/evals.tgz" -C /tmp "${folders[@]}"
(cd "$OUT" && compgen -G "*.log" > /dev/null && tar czf logs.tgz ./*.log && rm -f ./*.log)
echo "models evaluated: $done_count of $wanted (extras: $extras)"
[ $done_count = $wanted ] || exit 0
[ "${TIMING:-1}" = 1 ] || { echo "all done"; exit 0; }
# Time to answer (issue 14's time target) once every model is evaluated, the GPU then idle: bench/depth_answer.py
# times each recipe's answer at depth 4 against written reasoning, with the token counts of trained models forced on
# random weights (the TRM's networks compiled, as the evaluation runs them).
if [ "$(left 20)" -gt 60 ]; then  # $OUT starts empty in every call
  (cd bench && timeout "$(left 20)" python3 depth_answer.py --compile_thoughts default --out "$OUT/bench") \
    >> "$OUT/timing.log" 2>&1
fi
[ -f "$OUT/bench/depth_answer.json" ] && tail -12 "$OUT/timing.log" && echo "all done"
