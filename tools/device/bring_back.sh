#!/usr/bin/env bash
# On the device: bash tools/device/bring_back.sh MODEL_DIR NAME
# The model's config, tokenizer and bfloat16 weights (about 38 MB for the depth task's 17M model) as a tarball split
# into parts of 15 MB, $OUT/NAME.tar.part-aa, -ab, ...: a call returns at most 8 files of at most 16 MiB. Its code is
# not sent (the checkout has it): unpack here with tools/device/unpack_model.sh.
set -eu
staging=/tmp/bring_back/$2
rm -rf "$staging" && mkdir -p "$staging"
cp "$1"/*.json "$1"/*.jinja "$staging"/
python3 "$(dirname "$0")/cast_weights.py" "$1/model.safetensors" "$staging/model.safetensors" bfloat16
tar cf - -C "$staging" . | split -b 15M - "${OUT:?}/$2.tar.part-"
ls -la "$OUT"/"$2".tar.part-*
