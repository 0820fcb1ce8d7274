# Session 25's first call (after `source tools/device/setup.sh`): the trm_alone probes (probes.sh, 420 s) beside the
# spare pilot's stages 0-3 (640 steps: stage 4 begins there, so the model can be continued with
# --curriculum_first_stage 4), which bring_back.sh then sends back in parts.
set -u
if nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | awk '{exit !($1 > 100000)}'; then
  probes="t3 t3grad t3_reread t3grad_reread t3grad_reread_partial"
else
  probes="t3grad t3grad_reread t3grad_reread_partial"
fi
PROBES="$probes" bash .gpu/probes.sh 420 &
arm=trm_jacobi_own_snap_decay_cycles_spare
OMP_NUM_THREADS=2 timeout 545 python3 -m experiments depth --config experiments/configs/depth_800.yaml \
  --tokenizer .gpu/smollm2-tokenizer --compile_thoughts default --steps 640 --output_dir /tmp/spare640 --train_only \
  --arms $arm --seeds 0 --jobs 1 --time_limit_s 530 > "$OUT/driver_spare640.log" 2>&1
wait
final=/tmp/spare640/models/$arm/seed0/final
grep -o "{'loss'[^}]*}" "$OUT/driver_spare640.log" | tail -2 | cut -c1-200
if [ -f "$final/README.md" ]; then bash tools/device/bring_back.sh "$final" spare640; else echo "spare640 unfinished"; fi
gzip -f "$OUT/driver_spare640.log"
