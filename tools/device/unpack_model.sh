#!/usr/bin/env bash
# Here: bash tools/device/unpack_model.sh PARTS_FOLDER NAME MODEL_DIR
# Joins NAME.tar.xz.part-* or NAME.tar.gz.part-* (from bring_back.sh), writes the weights back as float32 and adds
# the model's code (this checkout's): `python -m eval` then loads the folder.
set -euo pipefail
mkdir -p "$3"
if [ -e "$1/$2.tar.xz.part-aa" ]; then decompress="xz -d" suffix=xz; else decompress="gzip -d" suffix=gz; fi
cat "$1/$2".tar.$suffix.part-* | $decompress | tar xf - -C "$3"
python3 "$(dirname "$0")/cast_weights.py" "$3/model.safetensors" "$3/model.safetensors" float32
cp configuration_smollm_trm.py modeling_smollm_trm.py "$3"/
ls "$3"
