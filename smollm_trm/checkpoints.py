"""Checkpoints: which ones are complete, where a run resumes, and the ZeRO checkpoints that need converting first."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

TRAINABLE_FILE = "trainable.safetensors"  # PEFT checkpoints: every trainable tensor, for exact resume
# Written by DeepSpeed's `ds_to_universal` beside a ZeRO checkpoint's `latest`: the conversion that resumes on any
# number of GPUs (docs/DISTRIBUTED.md).
UNIVERSAL_LATEST_FILE = "latest_universal"
RUN_SETTINGS_FILE = "run_settings.json"  # in output_dir: what the run there trains, to refuse resuming another one
# Settings a resumed run may change: they do not alter what is trained.
RESUMABLE_CHANGES = {"time_limit_s", "num_demo_answers", "merge_on_save", "early_stopping_patience", "start_over"}
# The TrainingArguments that define the training (the rest: logging, saving, reporting, hardware).
TRAINING_SETTINGS = ("learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "adam_beta1", "adam_beta2",
                     "adam_epsilon", "optim", "max_grad_norm", "max_steps", "num_train_epochs",
                     "per_device_train_batch_size", "gradient_accumulation_steps", "seed", "max_length", "bf16",
                     "fp16")


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


def run_settings(data_args, training_args, model_args, trm_args) -> dict:
    """What defines a training run, as JSON values: every data, model and TRM setting but the ones a resumed run
    may change, and the training arguments of `TRAINING_SETTINGS`."""
    import dataclasses

    settings = {}
    for args in (data_args, model_args, trm_args):
        settings.update({f.name: getattr(args, f.name) for f in dataclasses.fields(args)
                         if f.name not in RESUMABLE_CHANGES})
    settings.update({name: getattr(training_args, name) for name in TRAINING_SETTINGS})
    return json.loads(json.dumps(settings, default=str))


def check_same_run(output_dir: str, settings: dict, start_over: bool, main_process: bool = True) -> None:
    """Refuse to resume (or to call finished) a run in `output_dir` that trained other settings, naming what differs;
    with `start_over`, remove its checkpoints and final folder instead. Then record these settings (the main process
    of a distributed run deletes and writes; every process checks)."""
    from smollm_trm.export import FINAL_FOLDER

    path = Path(output_dir) / RUN_SETTINGS_FILE
    saved = json.loads(path.read_text()) if path.is_file() else None
    if saved is not None and saved != settings:
        if not start_over:
            changed = sorted(set(saved) | set(settings), key=str)
            changed = [f"{name}: {saved.get(name)!r} -> {settings.get(name)!r}" for name in changed
                       if saved.get(name) != settings.get(name)]
            raise ValueError(f"{output_dir} holds a run with other settings ({'; '.join(changed)}); resuming it "
                             "would mix the two. Use another --output_dir, or pass --start_over to delete its "
                             "checkpoints and final folder and train anew.")
        if not main_process:
            return
        logger.warning("--start_over: deleting the checkpoints and final folder of the run in %s.", output_dir)
        for folder in Path(output_dir).iterdir():
            if folder.is_dir() and (folder.name == FINAL_FOLDER or folder.name.startswith("checkpoint-")):
                shutil.rmtree(folder)
    if main_process:
        write_atomically(path, json.dumps(settings, indent=1, sort_keys=True))


def write_atomically(path: Path, text: str) -> None:
    """Write a temporary file beside `path`, sync it, and rename it over `path`: a reader sees the old or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # the processes of a distributed run may all write
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
