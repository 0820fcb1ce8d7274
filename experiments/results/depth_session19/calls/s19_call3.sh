# Session 19, call 3: bash .gpu/s19_call3.sh SECONDS (after `source tools/device/setup.sh`, on the machine that ran
# s19_cont.sh). Seeds 1 and 2 of trm_jacobi_own_snap_decay trained to step 640 (stages 0-3; stage 4 continues in a
# later call) and brought back, beside the device's evaluation of the two continued seed-0 models.
set -u
end=$(( $(date +%s) + $1 ))
rm -rf /tmp/evals
bash tools/device/train_depth.sh $((end - 50)) 640 /tmp/seeds trm_jacobi_own_snap_decay 1,2 > /tmp/seeds.txt 2>&1 &
for arm in trm_jacobi_own_snap_decay trm_jacobi_own_snap; do
  timeout $(( end - 60 - $(date +%s) )) bash tools/device/evaluate_depth.sh /tmp/cont/models/$arm/seed0/final $arm
done
wait
cat /tmp/seeds.txt
mkdir -p /tmp/logs && mv "$OUT"/* /tmp/logs/ 2>/dev/null; cp /tmp/seeds.txt /tmp/logs/
tar czf "$OUT/logs.tgz" -C /tmp logs; [ -d /tmp/evals ] && tar czf "$OUT/evals.tgz" -C /tmp evals
for seed in 1 2; do
  model=/tmp/seeds/models/trm_jacobi_own_snap_decay/seed$seed/final
  [ -d "$model" ] || model=$(ls -d /tmp/seeds/models/trm_jacobi_own_snap_decay/seed$seed/checkpoint-* | sort -V | tail -1)
  echo "bringing back $model"; bash tools/device/bring_back.sh "$model" decay_s$seed
done
