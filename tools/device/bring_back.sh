#!/usr/bin/env bash
# On the device: bash tools/device/bring_back.sh MODEL_DIR NAME
# The model's config, tokenizer and bfloat16 weights (44 MB for the depth task's 17M model: 28 MB with xz, 34 with
# gzip where xz is missing) as a compressed tarball split into parts of 15 MiB, $OUT/NAME.tar.xz.part-aa, -ab, ...: a
# call returns at most 8 files of at most 16 MiB, 64 MiB in all, so two such models per call with xz. Its code is not
# sent (the checkout has it): unpack here with tools/device/unpack_model.sh.
set -euo pipefail
staging=/tmp/bring_back/$2
rm -rf "$staging" && mkdir -p "$staging"
cp "$1"/*.json "$1"/*.jinja "$staging"/
# A final folder's card: `--continue_from` takes a model as finished by it (a checkpoint has none).
if [ -f "$1/README.md" ]; then cp "$1/README.md" "$staging"/; fi
python3 "$(dirname "$0")/cast_weights.py" "$1/model.safetensors" "$staging/model.safetensors" bfloat16
if command -v xz > /dev/null; then compress="xz -T0 -6" suffix=xz; else compress="gzip -6" suffix=gz; fi
tar cf - -C "$staging" . | $compress | split -b 15M - "${OUT:?}/$2.tar.$suffix.part-"
ls -la "$OUT"/"$2".tar.$suffix.part-*
