#!/usr/bin/env bash
# Here: bash tools/device/unpack_model.sh PARTS_FOLDER NAME MODEL_DIR
# Joins NAME.tar.part-* (from bring_back.sh), writes the weights back as float32 and adds the model's code (this
# checkout's): `python -m eval` then loads the folder.
set -eu
mkdir -p "$3"
cat "$1/$2".tar.part-* | tar xf - -C "$3"
python - "$3/model.safetensors" <<'PY'
import sys

import torch
from safetensors.torch import load_file, save_file

weights = load_file(sys.argv[1])
save_file({k: v.float() if v.is_floating_point() else v for k, v in weights.items()}, sys.argv[1],
          metadata={"format": "pt"})
PY
cp configuration_smollm_trm.py modeling_smollm_trm.py "$3"/
ls "$3"
