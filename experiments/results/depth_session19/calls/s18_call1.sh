# Session 18, call 1: bash .gpu/s18_call1.sh SECONDS (after `source tools/device/setup.sh`)
# Named-step arms from scratch at 800 steps (ARMS; written reasoning and the pause control finish and are evaluated
# here; a TRM would need a second call), beside the two continuations of session 17's snapped model (240 last-stage steps,
# with and without decay), which finish and come back in this call.
set -u
end=$(( $(date +%s) + $1 ))
arms=${ARMS:-cot_named,pause_forced_lm_own_named}
# the named TRM beside the continuations only where memory holds it (two stage-4 continuations take about 62 GB)
[ -z "${ARMS:-}" ] && [ "$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)" -gt 100000 ] \
  && arms=$arms,trm_jacobi_own_named
echo "named arms: $arms"
bash tools/device/train_depth.sh $end 800 /tmp/named $arms 0 > "$OUT/named.txt" 2>&1 &
evaluate_when_done() {  # ARM NAME MAX_NEW_TOKENS
  local model=/tmp/named/models/$1/seed0/final
  while [ ! -f $model/README.md ] && [ $(date +%s) -lt $end ]; do sleep 10; done
  [ -f $model/README.md ] && timeout $(( end - $(date +%s) )) bash tools/device/evaluate_depth.sh $model $2 $3
}
evaluate_when_done cot_named cot_named 128 &
evaluate_when_done pause_forced_lm_own_named pause_named 16 &
[ "${CONT_STEPS:-240}" -gt 0 ] && bash .gpu/s18_cont.sh $(( end - $(date +%s) - 60 )) ${CONT_STEPS:-240}
wait
cat "$OUT/named.txt"
[ -d /tmp/evals ] && tar czf "$OUT/evals.tgz" -C /tmp evals
(cd "$OUT" && tar czf logs.tgz *.log *.txt && rm -f *.log *.txt)
