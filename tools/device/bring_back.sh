#!/usr/bin/env bash
# On the device: bash tools/device/bring_back.sh MODEL_DIR NAME -> $OUT/model_NAME, the folder with bfloat16 weights
# (about 35 MB for the depth task's 17M model: one model per call fits what a call returns).
set -eu
mkdir -p "$OUT/model_$2" && cp "$1"/*.json "$1"/*.jinja "$1"/*.py "$OUT/model_$2/"
python3 - "$1/model.safetensors" "$OUT/model_$2/model.safetensors" <<'PY'
import sys
import torch
from safetensors.torch import load_file, save_file
weights = load_file(sys.argv[1])
save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in weights.items()}, sys.argv[2],
          metadata={"format": "pt"})
PY
du -sh "$OUT/model_$2"
