#!/usr/bin/env bash
# On the device: bash tools/device/evaluate_depth.sh MODEL_DIR NAME [MAX_NEW_TOKENS]
# A TRM: inference settings compared on validation (depth 4, 300 problems: soft and snapped thoughts at N_sup 5 and
# 8), then the test set at depths 1-6 in each of those settings. Any other model (a pause control): the test set at
# depths 1-6. Into /tmp/evals/NAME. MAX_NEW_TOKENS (default 16, an answer after thoughts) must hold written reasoning
# where the model writes it: 128 for named steps at depth 6 (about 110 tokens).
set -u
model=$1 dir=/tmp/evals/$2 max_new_tokens=${3:-16}
mkdir -p "$dir"
models=("$model")
read -r mode snapped < <(python3 -c 'import json, sys; config = json.load(open(sys.argv[1]))
print(config.get("thought_mode"), config.get("snap_thoughts", False))' "$model/config.json")
if [ "$mode" = trm ]; then
  # A model trained with snapped thoughts already tests snapped; another gets a snapped copy tested beside it.
  if [ "$snapped" != True ]; then
    rm -rf "/tmp/snap_$2" && cp -r "$model" "/tmp/snap_$2"
    python3 - "/tmp/snap_$2/config.json" <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))
config["snap_thoughts"] = True
json.dump(config, open(sys.argv[1], "w"), indent=2)
PY
    models=("/tmp/snap_$2" "$model")
  fi
  python3 -m experiments.inference_sweep "$model" --depths 4 --size 300 --n_supervision_steps 5,8 \
    --thoughts soft,snap_thoughts --output "$dir/sweep.json" > "$dir/sweep.log" 2>&1
  tail -6 "$dir/sweep.log"
fi
for depth in 1 2 3 4 5 6; do
  limit=300; [ "$depth" = 1 ] && limit=162  # depth 1 has 162 distinct held-out problems
  python3 -m eval "${models[@]/#/--model=}" --task arith --depth "$depth" --limit "$limit" --seed 0 \
    --batch_size 300 --max_new_tokens "$max_new_tokens" --n_supervision_steps 5,8 --compile_thoughts default \
    --output_dir "$dir/test/depth$depth" > "$dir/test_depth$depth.log" 2>&1
done
