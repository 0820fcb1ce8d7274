# Session 24's one-call plan: the trm_alone probes at the TRM's real size (2,000 steps or PROBE_SECONDS each, side by side), then the
# depth task's time-to-answer bench on the idle GPU. bash .gpu/s24_first.sh PROBE_SECONDS BENCH_SECONDS
set -u
PROBE_S=$1 BENCH_S=$2
nvidia-smi --query-gpu=name,memory.total --format=csv
mkdir -p $OUT/alone
for a in "t3 --n_cycles 3" "t6 --n_cycles 6" "t3grad --n_cycles 3 --carry_gradient" \
    "t3grad_step --n_cycles 3 --carry_gradient --step_embedding" "t3_reread --n_cycles 3 --reread" \
    "t3grad_reread --n_cycles 3 --carry_gradient --reread"; do
  set -- $a; n=$1; shift
  python3 -m experiments.trm_alone --width 256 --trm_width 256 --batch_size 256 --steps 2000 --time_limit_s "$PROBE_S" \
    --log_every 250 "$@" --output $OUT/alone/$n.json > $OUT/alone/$n.log 2>&1 &
done
wait
for f in $OUT/alone/*.md; do echo "== $f"; cat "$f"; done
tar czf $OUT/alone.tgz -C $OUT alone && rm -rf $OUT/alone
(cd bench && timeout "$BENCH_S" python3 depth_answer.py --compile_thoughts default --out $OUT/bench) > $OUT/timing.log 2>&1
tail -14 $OUT/timing.log
