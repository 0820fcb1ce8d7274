"""python tools/device/cast_weights.py SOURCE.safetensors TARGET.safetensors DTYPE: the floating-point tensors as DTYPE
(bfloat16 to bring a model back from the device, float32 to evaluate it here), the others as they are."""

import sys

import torch
from safetensors.torch import load_file, save_file

source, target, dtype = sys.argv[1], sys.argv[2], getattr(torch, sys.argv[3])
weights = load_file(source)
save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}, target,
          metadata={"format": "pt"})
