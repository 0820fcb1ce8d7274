#!/usr/bin/env bash
# Here, before the first device call of a session (from the project root, the project's environment active): the
# wheels the GPU image lacks (.whl/) and the from-scratch backbone's tokenizer (.gpu/smollm2-tokenizer), both ignored.
set -euo pipefail
# Beyond gpu-wheels' own list: transformers 5.25 needs huggingface_hub >= 2.4 (the image has 1.33), which needs httpx2
# and the rest; TRL's chunked log-prob kernel needs `kernels`.
../shared/tools/gpu-wheels .whl huggingface_hub httpx2 httpcore2 truststore hf-xet click h11 kernels tomlkit
python -c "from experiments.run import backbone_tokenizer
backbone_tokenizer(None).save_pretrained('.gpu/smollm2-tokenizer')"
echo "$(du -sh --exclude=.git . | cut -f1) in the working tree: a call carries at most 64 MiB" \
  "(move experiments/results aside, see tools/device/README.md)"
