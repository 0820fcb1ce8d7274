# Session 26's calls, one script: bash .gpu/s26.sh SECONDS (after `source tools/device/setup.sh`). Send it again, at
# once, until it prints "all done": each call goes on from what the warm machine holds (a cold one starts over).
#
# The spare pilot's last stage: trm_jacobi_own_snap_decay_cycles_spare seed 0 was trained to step 640 in session 25
# (stages 0-3; experiments/results/depth_session25/spare640, carried in .gpu/spare640), and continues here with stage
# 4's 560 steps from a fresh optimizer, the rate decayed over their second half, as the uninterrupted run's last stage
# (docs/RESULTS.md, Experiment 1u). Then the harness evaluates it (evals.tgz). The first call carries
# [".whl", ".gpu"] (56 MB with the parts); later ones [".gpu"].
# Sizes for a smoke run on a CPU: CONFIG, STEPS_LAST, TOKENIZER, LAST_TEST.
set -u
end=$(( $(date +%s) + $1 ))
config=${CONFIG:-experiments/configs/depth_800.yaml} tokenizer=${TOKENIZER:-.gpu/smollm2-tokenizer}
arm=trm_jacobi_own_snap_decay_cycles_spare last=${LAST_TEST:-depth6-given6}
start=/tmp/p640 out=/tmp/$arm
export OMP_NUM_THREADS=4
left() { echo $(( end - $(date +%s) - $1 )); }
finished() { [ -f "$out/models/$arm/seed0/final/README.md" ]; }
evaluated() { [ -f "$out/evals/$arm/seed0/$last/results.json" ]; }
harness() {  # SECONDS LOG_NAME ARGS...: the continued run's settings (a finished model is evaluated, not retrained)
  local limit=$1 log=$2; shift 2
  [ "$limit" -gt 0 ] || return 1
  timeout "$limit" python3 -m experiments depth --config "$config" --tokenizer "$tokenizer" --compile_thoughts default \
    --continue_from "$start" --arms "$arm" --seeds 0 --curriculum_first_stage 4 --steps "${STEPS_LAST:-560}" \
    --warmup_steps 0 --output_dir "$out" "$@" >> "$OUT/driver_$log.log" 2>&1
}

if [ ! -f "$start/models/$arm/seed0/final/README.md" ]; then
  bash tools/device/unpack_model.sh .gpu/spare640 spare640 "$start/models/$arm/seed0/final" > /dev/null
fi
finished || harness "$(left 30)" train --train_only --time_limit_s "$(left 60)"
finished && ! evaluated && harness "$(left 20)" eval
grep -o "{'loss'[^}]*}" "$OUT"/driver_train.log 2>/dev/null | tail -1 | cut -c1-150
[ -d "$out/evals" ] && tar czf "$OUT/evals.tgz" -C "$out" evals
[ -f "$out/results.md" ] && grep -A3 "^| arm | depth 1" "$out/results.md" | head -4
(cd "$OUT" && compgen -G "*.log" > /dev/null && tar czf logs.tgz ./*.log && rm -f ./*.log)
if evaluated; then echo "all done"; else echo "not done: send it again"; fi
