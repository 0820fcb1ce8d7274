"""Checkpoints: their manifests (what makes one complete), rotation, where a run resumes, the settings a resumed run must
keep, and the ZeRO checkpoints that need converting first."""

from __future__ import annotations

import hashlib
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
MANIFEST_FILE = "manifest.json"  # in a checkpoint, written last: every other file's size and hash
HASH_BLOCK = 1 << 23
RUN_SETTINGS_FILE = "run_settings.json"  # in output_dir: what the run there trains, to refuse resuming another one
# Settings a resumed run may change: they do not alter what is trained.
RESUMABLE_CHANGES = {"time_limit_s", "num_demo_answers", "merge_on_save", "early_stopping_patience", "start_over",
                     "compile_thoughts"}
# The TrainingArguments that define the training (the rest: logging, saving, reporting, hardware).
TRAINING_SETTINGS = ("learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "adam_beta1", "adam_beta2",
                     "adam_epsilon", "optim", "max_grad_norm", "max_steps", "num_train_epochs",
                     "per_device_train_batch_size", "gradient_accumulation_steps", "seed", "max_length", "bf16",
                     "fp16")


def file_digest(path: Path, sync: bool = False) -> str:
    """The file's blake2b; `sync` also flushes it to disk (what a manifest vouches for must survive a power cut)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(HASH_BLOCK), b""):
            digest.update(block)
        if sync:
            os.fsync(handle.fileno())
    return digest.hexdigest()


def write_manifest(folder: str | os.PathLike) -> None:
    """Record every file of a checkpoint written in full (size and hash), each synced to disk, in `MANIFEST_FILE`,
    written last and atomically: a checkpoint is complete exactly when its manifest verifies. The manifest, not a
    rename, commits the folder, because the Trainer writes `checkpoint-N` itself and records that path (the best
    checkpoint) in the state it saves."""
    folder = Path(folder)
    files = {str(path.relative_to(folder)): {"size": path.stat().st_size, "blake2b": file_digest(path, sync=True)}
             for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MANIFEST_FILE}
    write_atomically(folder / MANIFEST_FILE, json.dumps({"files": files}, indent=1))
    sync_folder(folder)


def sync_tree(folder: Path) -> None:
    """Flush every file under `folder`, and the folder, to disk (before a rename makes it visible as complete)."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    sync_folder(folder)


def sync_folder(folder: Path) -> None:
    """Flush a folder's entries (the names of what was just written or renamed in it) to disk."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def checkpoint_problem(folder: str | os.PathLike, hashes: bool = True) -> str | None:
    """Why a checkpoint cannot be resumed from (None: its manifest verifies): no manifest (killed while saving, or
    partly deleted), a file missing, of another size, or (`hashes`) of other content."""
    folder = Path(folder)
    try:
        files = json.loads((folder / MANIFEST_FILE).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"no readable {MANIFEST_FILE} (killed while saving or deleting?)"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} has {path.stat().st_size} bytes, {expected['size']} were written"
        if hashes and file_digest(path) != expected["blake2b"]:
            return f"{name} does not hold what was written (its hash differs)"
    return None


def checkpoint_folders(output_dir: str | os.PathLike) -> list[Path]:
    """The `checkpoint-N` folders of `output_dir`, by step N (not by time, which a copy or a clock can change)."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not os.path.isdir(output_dir):
        return []
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    steps = sorted((int(m.group(1)), m.group(0)) for m in map(pattern.match, os.listdir(output_dir)) if m)
    return [Path(output_dir) / name for _, name in steps]


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The latest `checkpoint-N` in `output_dir` whose manifest verifies; the newer ones skipped are logged with why."""
    for folder in reversed(checkpoint_folders(output_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder)
        logger.warning("Not resuming from %s: %s.", folder, problem)
    return None


def rotate_checkpoints(output_dir: str | os.PathLike, save_total_limit: int | None, keep: str | None = None) -> None:
    """Keep the newest `save_total_limit` complete checkpoints (and `keep`, the best one) and delete the older ones.
    A checkpoint loses its manifest before its files, so a kill while deleting leaves one that is never resumed
    from, and one that is not complete is never counted among those kept."""
    if not save_total_limit or save_total_limit <= 0:
        return
    folders = checkpoint_folders(output_dir)
    complete = [folder for folder in folders if checkpoint_problem(folder, hashes=False) is None]
    if not complete:
        return
    kept = set(complete[-save_total_limit:]) | ({Path(keep)} if keep else set())
    oldest_kept = min(folders.index(folder) for folder in kept if folder in folders)
    for folder in folders[:oldest_kept]:  # older than every checkpoint kept: complete or partial, it goes
        if folder not in kept:
            (folder / MANIFEST_FILE).unlink(missing_ok=True)
            shutil.rmtree(folder)


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
        problem = checkpoint_problem(explicit)
        if problem is not None:
            raise ValueError(f"--resume_from_checkpoint {explicit!r} is not a complete checkpoint: {problem}.")
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


def setting_defaults(*settings_dataclasses) -> dict:
    """The default of every field of these argument dataclasses, as JSON values: what a run recorded before a setting
    existed trained with."""
    import dataclasses

    defaults = {}
    for args in settings_dataclasses:
        for f in dataclasses.fields(args):
            if f.default is not dataclasses.MISSING:
                defaults[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                defaults[f.name] = f.default_factory()
    return json.loads(json.dumps(defaults, default=str))


def check_same_run(output_dir: str, settings: dict, start_over: bool, main_process: bool = True,
                   defaults: dict | None = None) -> None:
    """Refuse to resume (or to call finished) a run in `output_dir` that trained other settings, naming what differs;
    with `start_over`, remove its checkpoints and final folder instead. Then record these settings (the main process
    of a distributed run deletes and writes; every process checks). A setting the recorded run lacks (one added to
    the code since) counts as its value in `defaults`, which is what that run trained with."""
    from smollm_trm.export import FINAL_FOLDER

    path = Path(output_dir) / RUN_SETTINGS_FILE
    saved = json.loads(path.read_text()) if path.is_file() else None
    if saved is not None and defaults:
        saved = {**{name: defaults[name] for name in settings if name in defaults and name not in saved}, **saved}
    if saved is not None and saved != settings:
        if not start_over:
            changed = [f"{name}: {saved.get(name)!r} -> {settings.get(name)!r}"
                       for name in sorted(set(saved) | set(settings)) if saved.get(name) != settings.get(name)]
            raise ValueError(f"{output_dir} holds a run with other settings ({'; '.join(changed)}); resuming it "
                             "would mix the two. Use another --output_dir, or pass --start_over to delete its "
                             "checkpoints and final folder and train anew.")
        if not main_process:
            return
        logger.warning("--start_over: deleting the checkpoints and final folder of the run in %s.", output_dir)
        for folder in [*checkpoint_folders(output_dir), Path(output_dir) / FINAL_FOLDER]:
            shutil.rmtree(folder, ignore_errors=True)
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
