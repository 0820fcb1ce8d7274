# Session 19: s18_cont.sh after marking the unpacked model finished (session 17's parts came back without the card
# that `--continue_from` looks for). Usage: bash .gpu/s19_cont.sh TIME_LIMIT_S STEPS
set -u
rm -rf /tmp/prev /tmp/cont  # a warm machine keeps an earlier call's
bash tools/device/unpack_model.sh .gpu/prev snap_s0 /tmp/prev/models/trm_jacobi_own_snap/seed0/final > /dev/null
echo "# trm_jacobi_own_snap seed 0 (session 17, 1200 steps; brought back without its card)" \
  > /tmp/prev/models/trm_jacobi_own_snap/seed0/final/README.md
mkdir -p /tmp/prev/models/trm_jacobi_own_snap_decay/seed0
cp -r /tmp/prev/models/trm_jacobi_own_snap/seed0/final /tmp/prev/models/trm_jacobi_own_snap_decay/seed0/final
bash .gpu/s18_cont.sh "$1" "$2"
(cd "$OUT" && tar czf logs.tgz *.log *.txt 2>/dev/null && rm -f *.log *.txt)
