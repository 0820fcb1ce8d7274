"""Checkpoints: which ones are complete, where a run resumes, and the ZeRO checkpoints that need converting first."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

logger = logging.getLogger(__name__)

TRAINABLE_FILE = "trainable.safetensors"  # PEFT checkpoints: every trainable tensor, for exact resume
# Written by DeepSpeed's `ds_to_universal` beside a ZeRO checkpoint's `latest`: the conversion that resumes on any
# number of GPUs (docs/DISTRIBUTED.md).
UNIVERSAL_LATEST_FILE = "latest_universal"


def is_complete_checkpoint(folder: str | os.PathLike) -> bool:
    """The Trainer writes a checkpoint in place (not atomically) and trainer_state.json last; a readable one means
    everything before it was written."""
    state = Path(folder) / "trainer_state.json"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The latest `checkpoint-N` in `output_dir` that is complete (a run killed while saving leaves a partial one)."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not os.path.isdir(output_dir):
        return None
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    steps = sorted((int(m.group(1)), m.group(0)) for m in map(pattern.match, os.listdir(output_dir)) if m)
    for _, name in reversed(steps):
        path = os.path.join(output_dir, name)
        if is_complete_checkpoint(path):
            return path
        logger.warning("Ignoring %s: incomplete (no readable trainer_state.json), probably killed while saving.", path)
    return None


def check_zero_world_size(checkpoint: str, processes: int) -> None:
    """A ZeRO checkpoint holds one optimizer-state file per process that saved it, and DeepSpeed loads it only on as
    many; on another number, say how to convert it rather than fail inside DeepSpeed."""
    latest = Path(checkpoint) / "latest"
    if not latest.is_file():
        return
    tag = latest.read_text().strip()
    saved = len(list((Path(checkpoint) / tag).glob("*_optim_states.pt")))
    if saved and saved != processes:
        raise ValueError(
            f"{checkpoint} was saved by {saved} DeepSpeed processes and this run has {processes}. Convert it once "
            f"with `python -m deepspeed.checkpoint.ds_to_universal --input_folder {Path(checkpoint) / tag} "
            f"--output_folder {Path(checkpoint) / (tag + '_universal')}`, then resume from it again (any number of "
            "processes), or resume on the same number.")


def resume_point(training_args) -> str | None:
    explicit = training_args.resume_from_checkpoint
    if explicit:
        if not is_complete_checkpoint(explicit):
            raise ValueError(f"--resume_from_checkpoint {explicit!r} is not a complete checkpoint (no readable "
                             "trainer_state.json).")
        return explicit
    found = last_complete_checkpoint(training_args.output_dir)
    if found:
        logger.info("Resuming from %s, the last complete checkpoint in output_dir.", found)
    return found
