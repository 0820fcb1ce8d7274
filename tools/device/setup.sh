# On the device, first in every call: `source tools/device/setup.sh` (carry [".whl", ".gpu"]). Installs the wheels,
# sets the offline environment, logs nvidia-smi every 20 s to $OUT/nvidia_smi.csv and prints the versions.
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$HOME/site" .whl/*.whl
export PYTHONPATH="$HOME/site:$PWD" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
# With `kernels` installed (TRL needs it), transformers fetches a rotary kernel from the Hub when a model is loaded
# for evaluation, and fails offline (session 17: every evaluation of the call failed).
export USE_HUB_KERNELS=0
(nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader -l 20 \
  > "${OUT:?}/nvidia_smi.csv" 2>&1 &)
python3 -c "import torch, transformers, trl, kernels; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'trl', trl.__version__, torch.cuda.get_device_name())"
