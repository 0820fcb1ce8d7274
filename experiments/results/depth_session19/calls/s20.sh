# Session 20's calls, one script: bash .gpu/s20.sh SECONDS (after `source tools/device/setup.sh`; .gpu/prev holds
# the parts of decay_s1 or decay_s2, the 640-step models of session 19's call 3). Send it again, at once, until it prints
# "all done": each call goes on from what the warm machine holds (a machine that went cold starts over).
# A call carries at most 64 MiB and .whl takes 25 of them: the first call carries [".whl", ".gpu"] with decay_s1's
# parts in .gpu/prev, the second only [".gpu"] with decay_s2's (.whl stays on the warm machine), then either.
#
# Seeds 1 and 2 follow seed 0's path exactly (session 17's trm_jacobi_own_snap to 1200 steps, then session 19's 240
# last-stage steps with the decayed rate from a fresh optimizer):
#   phase 1  trm_jacobi_own_snap: stage 4 at the full rate, 560 steps, from the 640-step models
#   phase 2  trm_jacobi_own_snap_decay: 240 more last-stage steps, the rate decayed over the second half
#   then     both come back (4 parts) and are evaluated here (evals.tgz)
# The matched pause control, seeds 0-2, the same path from scratch (1200 steps, then 240 with decay), evaluated here:
# it starts beside the TRMs where the GPU holds more than 100 GB, else once the TRMs are done.
# Sizes for a smoke run on a CPU: CONFIG, STEPS_640, STEPS_1200, STEPS_DECAY, TOKENIZER, SEEDS_PAUSE.
set -u
end=$(( $(date +%s) + $1 ))
config=${CONFIG:-experiments/configs/depth_800.yaml}
full=${STEPS_1200:-1200} first=${STEPS_640:-640} decay=${STEPS_DECAY:-240}
tokenizer=${TOKENIZER:-.gpu/smollm2-tokenizer}
left() { echo $(( end - $(date +%s) - $1 )); }
finished() {  # OUTPUT_DIR ARM SEEDS: every seed's final model is there
  local seed; for seed in ${3//,/ }; do [ -f "$1/models/$2/seed$seed/final/README.md" ] || return 1; done
}
link_finals() {  # FROM_DIR FROM_ARM TO_DIR TO_ARM SEEDS: a continuation's --continue_from, under its own arm's name
  local seed; for seed in ${5//,/ }; do
    mkdir -p "$3/models/$4/seed$seed" && ln -sfn "$1/models/$2/seed$seed/final" "$3/models/$4/seed$seed/final"
  done
}
depth() {  # OUTPUT_DIR LOG_NAME ARGS...: train only, side by side, until the call's end less a minute
  local out=$1 log=$2; shift 2
  python3 -m experiments depth --config "$config" --train_only --tokenizer "$tokenizer" --compile_thoughts default \
    --output_dir "$out" --time_limit_s "$(left 60)" "$@" >> "$OUT/driver_$log.log" 2>&1
  cp "$out"/logs/*.log "$OUT"/ 2>/dev/null
}
trained() {  # OUTPUT_DIR ARM SEEDS LOG_NAME ARGS...: true once every seed's final model is there (trains the rest)
  local out=$1 arm=$2 seeds=$3 log=$4; shift 4
  finished "$out" "$arm" "$seeds" || depth "$out" "$log" --arms "$arm" --seeds "$seeds" \
    --jobs "$(tr ',' '\n' <<< "$seeds" | wc -l)" "$@"
  finished "$out" "$arm" "$seeds"
}
decayed() {  # FROM_DIR FROM_ARM OUTPUT_DIR ARM SEEDS LOG_NAME: STEPS_DECAY more last-stage steps, fresh optimizer
  link_finals "$1" "$2" "$3_link" "$4" "$5"
  trained "$3" "$4" "$5" "$6" --continue_from "$3_link" --curriculum_first_stage 4 --steps "$decay" --warmup_steps 0
}
evaluated() {  # OUTPUT_DIR ARM SEEDS NAME: each seed's model evaluated once, into /tmp/evals/NAME_s<SEED>
  local seed; for seed in ${3//,/ }; do
    [ -f "/tmp/evals/$4_s$seed/test/depth6/results.json" ] || timeout "$(left 30)" \
      bash tools/device/evaluate_depth.sh "$1/models/$2/seed$seed/final" "$4_s$seed"
  done
}

unpack_640() {  # the 640-step models from .gpu/prev: one per call where a call cannot carry both (above)
  local seed
  for seed in 1 2; do
    if ! finished /tmp/p640 trm_jacobi_own_snap $seed && [ -e .gpu/prev/decay_s$seed.tar.xz.part-aa ]; then
      bash tools/device/unpack_model.sh .gpu/prev decay_s$seed /tmp/p640/models/trm_jacobi_own_snap/seed$seed/final \
        > /dev/null
    fi
  done
  finished /tmp/p640 trm_jacobi_own_snap 1,2
}

trm_seeds() {
  if ! unpack_640; then
    echo "one 640-step model unpacked: send the other's parts in .gpu/prev (carry [\".gpu\"]), at once"
    return
  fi
  trained /tmp/s4 trm_jacobi_own_snap 1,2 phase1 --continue_from /tmp/p640 --curriculum_first_stage 4 \
    --steps $(( full - first )) --warmup_steps 0 || return
  decayed /tmp/s4 trm_jacobi_own_snap /tmp/s5 trm_jacobi_own_snap_decay 1,2 phase2 || return
  if [ ! -f /tmp/s5/brought_back ]; then
    for seed in 1 2; do
      bash tools/device/bring_back.sh /tmp/s5/models/trm_jacobi_own_snap_decay/seed$seed/final snap_decay_s$seed
    done
    touch /tmp/s5/brought_back
  fi
  evaluated /tmp/s5 trm_jacobi_own_snap_decay 1,2 snap_decay
}

pause_seeds() {
  local seeds=${SEEDS_PAUSE:-0,1,2}
  trained /tmp/pause pause_forced_lm_own_snap "$seeds" pause1 --steps "$full" || return
  decayed /tmp/pause pause_forced_lm_own_snap /tmp/pause2 pause_forced_lm_own_snap_decay "$seeds" pause2 || return
  evaluated /tmp/pause2 pause_forced_lm_own_snap_decay "$seeds" pause_snap_decay
}

memory=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
if [ "${memory:-0}" -gt 100000 ]; then
  pause_seeds & trm_seeds; wait
else
  trm_seeds
  finished /tmp/s5 trm_jacobi_own_snap_decay 1,2 && pause_seeds
fi
for log in "$OUT"/*-seed*.log; do
  [ -f "$log" ] && echo "== $log: $(grep -o "{'loss'[^}]*}" "$log" | tail -1 | cut -c1-160)"
done
grep -h "accuracy %" -A5 /tmp/evals/*/sweep.log 2>/dev/null | grep "| 4 |"
[ -d /tmp/evals ] && tar czf "$OUT/evals.tgz" -C /tmp evals
(cd "$OUT" && compgen -G "*.log" > /dev/null && tar czf logs.tgz ./*.log && rm -f ./*.log)
ls /tmp/evals/*/test/depth6/results.json 2>/dev/null | wc -l | xargs echo "models evaluated at every depth:"
[ "$(ls /tmp/evals/*/test/depth6/results.json 2>/dev/null | wc -l)" -ge $(( 2 + $(tr ',' '\n' <<< "${SEEDS_PAUSE:-0,1,2}" | wc -l) )) ] \
  && echo "all done"
