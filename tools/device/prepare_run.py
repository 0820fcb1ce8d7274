"""python tools/device/prepare_run.py CONFIG OUTPUT_DIR TOKENIZER: seed 0's data, backbone and train_config.yaml of
a depth experiment, without training (what bench/profile_train_sft.py needs to profile an arm's step)."""

import dataclasses
import sys
from pathlib import Path

from experiments.run import seed_backbone, train_data, write_train_config
from experiments.settings import load_config

config, output_dir, tokenizer = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
settings, train = load_config(config)
write_train_config(train, output_dir / "train_config.yaml", None)
settings = dataclasses.replace(settings, tokenizer=tokenizer)
print(train_data("depth", settings, output_dir, 0, "worked"), seed_backbone(settings, output_dir, 0))
