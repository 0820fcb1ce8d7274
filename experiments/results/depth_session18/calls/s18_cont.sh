# Session 18: session 17's trm_jacobi_own_snap seed 0 (1200 steps) continued STEPS last-stage steps, with and without
# the decayed learning rate, side by side; both brought back. Usage: bash .gpu/s18_cont.sh TIME_LIMIT_S STEPS
set -u
if [ ! -d /tmp/prev ]; then
  bash tools/device/unpack_model.sh .gpu/prev snap_s0 /tmp/prev/models/trm_jacobi_own_snap/seed0/final > /dev/null
  mkdir -p /tmp/prev/models/trm_jacobi_own_snap_decay/seed0
  cp -r /tmp/prev/models/trm_jacobi_own_snap/seed0/final /tmp/prev/models/trm_jacobi_own_snap_decay/seed0/final
fi
python3 -m experiments depth --config experiments/configs/depth_800.yaml --arms trm_jacobi_own_snap,trm_jacobi_own_snap_decay \
  --seeds 0 --jobs 2 --continue_from /tmp/prev --curriculum_first_stage 4 --steps "$2" --warmup_steps 0 --train_only \
  --output_dir /tmp/cont --tokenizer .gpu/smollm2-tokenizer --time_limit_s "$1" --compile_thoughts default \
  > "$OUT/driver_cont.log" 2>&1
cp /tmp/cont/logs/*.log "$OUT"/ 2>/dev/null
for log in /tmp/cont/logs/*.log; do echo "== $log"; grep -o "{'loss'[^}]*}" "$log" | tail -2 | cut -c1-300
  grep -E "stopped at step|Error" "$log" | tail -2; done
tail -3 "$OUT/driver_cont.log"
for arm in trm_jacobi_own_snap trm_jacobi_own_snap_decay; do
  model=/tmp/cont/models/$arm/seed0/final
  [ -d "$model" ] || model=$(ls -d /tmp/cont/models/$arm/seed0/checkpoint-* | tail -1)
  echo "bringing back $model"; bash tools/device/bring_back.sh "$model" "$arm"
done
