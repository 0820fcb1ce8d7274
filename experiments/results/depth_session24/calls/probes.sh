# The trm_alone probes at the TRM's real size (docs/RESULTS.md, Experiments 1s-1t), side by side, compiled, thoughts
# at scale 1 (since session 24): bash .gpu/probes.sh SECONDS [BENCH_SECONDS] after `source tools/device/setup.sh`.
# Each arm trains 3,000 steps or SECONDS, then is tested; alone.tgz brings the logs and tables back. BENCH_SECONDS > 0
# then times bench/depth_answer.py on the idle GPU. Run beside s21.sh: `bash .gpu/probes.sh 420 & bash .gpu/s21.sh
# 550; wait` (setup.sh sourced first, not in the background).
set -u
export OMP_NUM_THREADS=1 TORCHINDUCTOR_COMPILE_THREADS=1  # beside the pilots' host-bound trainings
probe_s=$1 bench_s=${2:-0}
mkdir -p "$OUT/alone"
for arm in "t3 --n_cycles 3" "t3grad --n_cycles 3 --carry_gradient" "t3_reread --n_cycles 3 --reread" \
    "t3grad_reread --n_cycles 3 --carry_gradient --reread" \
    "t3grad_reread_partial --n_cycles 3 --carry_gradient --reread --questions partial"; do
  set -- $arm; name=$1; shift
  python3 -m experiments.trm_alone --width 256 --trm_width 256 --batch_size 256 --steps 3000 --learning_rate 3e-4 \
    --compile_thoughts default --time_limit_s "$probe_s" --log_every 250 "$@" --output "$OUT/alone/$name.json" \
    > "$OUT/alone/$name.log" 2>&1 &
done
wait
for table in "$OUT"/alone/*.md; do echo "== $table"; cat "$table"; done
tar czf "$OUT/alone.tgz" -C "$OUT" alone && rm -rf "$OUT/alone"
if [ "$bench_s" -gt 0 ]; then
  (cd bench && timeout "$bench_s" python3 depth_answer.py --compile_thoughts default --out "$OUT/bench") \
    > "$OUT/timing.log" 2>&1
  tail -14 "$OUT/timing.log"
fi
