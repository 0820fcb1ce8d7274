# The trm_alone probes at the TRM's real size (docs/RESULTS.md, Experiments 1s-1t), side by side, compiled, thoughts
# at scale 1 (since session 24): bash .gpu/probes.sh SECONDS [BENCH_SECONDS] after `source tools/device/setup.sh`.
# Each arm trains STEPS (default 3,000) or SECONDS, then is tested; alone.tgz brings the logs and tables back. Session
# 25's ran about 3.4 steps a second beside a training run, so 420 s stopped them near step 1,450 with the learning rate
# still high: STEPS=1500 lets the schedule end within SECONDS=460. BENCH_SECONDS > 0 then times
# bench/depth_answer.py on the idle GPU. PROBES names the arms (default: all six below). Session 24's
# probes held 11-13 GB each (uncompiled), so beside the pilots (about 56 GB) an 80 GB H100 holds two of them:
# `PROBES="t3grad t3grad_reread" bash .gpu/probes.sh 420 & bash .gpu/s21.sh 550; wait` (setup.sh sourced first,
# not in the background).
set -u
export OMP_NUM_THREADS=1 TORCHINDUCTOR_COMPILE_THREADS=1  # beside the pilots' host-bound trainings
probe_s=$1 bench_s=${2:-0}
declare -A flags=(
  [t3]="--n_cycles 3"
  [t3grad]="--n_cycles 3 --carry_gradient"
  [t3_reread]="--n_cycles 3 --reread"
  [t3grad_reread]="--n_cycles 3 --carry_gradient --reread"
  [t3grad_reread_partial]="--n_cycles 3 --carry_gradient --reread --questions partial"
  [t3grad_reread_packed]="--n_cycles 3 --carry_gradient --reread --questions packed"  # since session 25
)
mkdir -p "$OUT/alone"
for name in ${PROBES:-t3 t3grad t3_reread t3grad_reread t3grad_reread_partial t3grad_reread_packed}; do
  [ -n "${flags[$name]:-}" ] || { echo "unknown probe $name (one of: ${!flags[*]})"; exit 1; }
  # shellcheck disable=SC2086  # the flags split into words
  python3 -m experiments.trm_alone --width 256 --trm_width 256 --batch_size 256 --steps "${STEPS:-3000}" \
    --learning_rate 3e-4 --compile_thoughts default --time_limit_s "$probe_s" --log_every 250 ${flags[$name]} \
    --output "$OUT/alone/$name.json" > "$OUT/alone/$name.log" 2>&1 &
done
wait
for table in "$OUT"/alone/*.md; do echo "== $table"; cat "$table"; done
tar czf "$OUT/alone.tgz" -C "$OUT" alone && rm -rf "$OUT/alone"
if [ "$bench_s" -gt 0 ]; then
  (cd bench && timeout "$bench_s" python3 depth_answer.py --compile_thoughts default --out "$OUT/bench") \
    > "$OUT/timing.log" 2>&1
  tail -14 "$OUT/timing.log"
fi
