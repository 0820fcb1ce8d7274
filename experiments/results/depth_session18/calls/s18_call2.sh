# Session 18, call 2: bash .gpu/s18_call2.sh SECONDS_OF_TRAINING (after `source tools/device/setup.sh`)
# Finishes the named-step runs, evaluates the pause control here, brings back the TRM and the written-reasoning model.
set -u
arms=$(ls /tmp/named/models | paste -sd,)
bash tools/device/train_depth.sh $(( $(date +%s) + $1 )) 800 /tmp/named "$arms" 0 > "$OUT/named.txt" 2>&1
cat "$OUT/named.txt"
pause=/tmp/named/models/pause_forced_lm_own_named/seed0/final
[ -d $pause ] && bash tools/device/evaluate_depth.sh $pause pause_named &
for arm in trm_jacobi_own_named cot_named; do
  model=/tmp/named/models/$arm/seed0/final
  [ -d $model ] || model=$(ls -d /tmp/named/models/$arm/seed0/checkpoint-* | tail -1)
  echo "bringing back $model"; bash tools/device/bring_back.sh "$model" $arm
done
wait
[ -d /tmp/evals ] && tar czf "$OUT/evals.tgz" -C /tmp evals
(cd "$OUT" && tar czf logs.tgz *.log *.txt && rm -f *.log *.txt)
