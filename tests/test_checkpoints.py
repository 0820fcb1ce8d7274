"""Checkpoints are complete exactly when their manifest verifies; rotation keeps complete ones, by step, and a kill
while rotating never costs one (tiny models, CPU)."""

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
from test_train_sft import backbone, cli, write_data  # noqa: F401  (backbone is a fixture)

import train_sft
from smollm_trm.arguments import make_parser
from smollm_trm.checkpoints import (MANIFEST_FILE, checkpoint_folders, checkpoint_problem, last_complete_checkpoint,
                                    rotate_checkpoints, write_manifest)


def train(backbone, tmp_path, *extra):
    args = cli(backbone, write_data(tmp_path, "qa"), tmp_path / "out", "--max_steps", "3", "--save_strategy",
               "steps", "--save_steps", "1", *extra)
    return args, train_sft.main(*make_parser().parse_args_and_config(args))


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name, damage, reason", [
    ("model.safetensors", truncate, "bytes"),
    ("optimizer.pt", flip_a_byte, "hash differs"),
    ("scheduler.pt", lambda path: path.unlink(), "missing"),
    ("config.json", flip_a_byte, "hash differs"),
    ("trainable.safetensors", truncate, "bytes"),  # a LoRA run's trainable tensors
    ("trm_ema.safetensors", flip_a_byte, "hash differs"),  # the EMA weights
    (MANIFEST_FILE, truncate, "no readable"),
])
def test_a_damaged_checkpoint_is_skipped_with_its_reason_and_the_run_resumes_from_the_one_before(
        backbone, tmp_path, caplog, name, damage, reason):
    args, _ = train(backbone, tmp_path, "--time_limit_s", "1e-9", "--ema_decay", "0.9")  # checkpoint-1 only
    args, _ = train(backbone, tmp_path, "--max_steps", "3", "--ema_decay", "0.9")  # resumes: checkpoints 2, 3
    newest = tmp_path / "out" / "checkpoint-3"
    listed = json.loads((newest / MANIFEST_FILE).read_text())["files"]
    written = {str(p.relative_to(newest)) for p in newest.rglob("*") if p.is_file() and p.name != MANIFEST_FILE}
    assert set(listed) == written, "the manifest lists every file of its checkpoint"
    out = tmp_path / "out"
    shutil.rmtree(out / "final")
    assert [checkpoint_problem(folder) for folder in checkpoint_folders(out)] == [None] * 3
    damage(out / "checkpoint-3" / name)
    with caplog.at_level("WARNING"):
        assert last_complete_checkpoint(str(out)) == str(out / "checkpoint-2")
    assert "checkpoint-3" in caplog.text and reason in caplog.text
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2


def test_rotation_keeps_the_newest_complete_checkpoints_by_step(backbone, tmp_path):
    train(backbone, tmp_path, "--max_steps", "4", "--save_total_limit", "2")
    assert [folder.name for folder in checkpoint_folders(tmp_path / "out")] == ["checkpoint-3", "checkpoint-4"]


def fake_checkpoints(folder, steps):
    for step in steps:
        checkpoint = folder / f"checkpoint-{step}"
        (checkpoint / "sub").mkdir(parents=True)
        for index in range(4):
            (checkpoint / ("sub" if index % 2 else "") / f"part{index}.bin").write_bytes(bytes([step]) * 64)
        write_manifest(checkpoint)


def test_a_kill_at_any_point_of_rotation_loses_no_checkpoint_it_keeps(tmp_path, monkeypatch):
    real_rmtree = shutil.rmtree
    for seed in range(20):  # a bounded, seeded set of kill points
        rng = random.Random(seed)
        folder = tmp_path / f"run{seed}"
        fake_checkpoints(folder, [1, 2, 3, 5, 8])
        (folder / "checkpoint-5" / MANIFEST_FILE).unlink()  # a partial one among them (killed while saving)
        budget = rng.randrange(12)

        def killed_rmtree(path, *args, **kwargs):  # deletes `budget` files in all, then the process dies
            nonlocal budget
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                if budget == 0:
                    raise KeyboardInterrupt
                file.unlink()
                budget -= 1
            real_rmtree(path, *args, **kwargs)

        monkeypatch.setattr(shutil, "rmtree", killed_rmtree)
        try:
            rotate_checkpoints(folder, save_total_limit=2)
        except KeyboardInterrupt:
            pass
        monkeypatch.setattr(shutil, "rmtree", real_rmtree)
        complete = [c.name for c in checkpoint_folders(folder) if checkpoint_problem(c) is None]
        assert complete[-2:] == ["checkpoint-3", "checkpoint-8"], (seed, complete)  # the two kept ones
        assert last_complete_checkpoint(str(folder)) == str(folder / "checkpoint-8")
        for checkpoint in checkpoint_folders(folder):  # a partly deleted one is never complete
            files = [p for p in checkpoint.rglob("*") if p.is_file() and p.name != MANIFEST_FILE]
            if len(files) < 4:
                assert checkpoint_problem(checkpoint) is not None


def test_a_manifest_vouches_only_for_files_synced_to_disk(tmp_path, monkeypatch):
    from smollm_trm import checkpoints

    folder = tmp_path / "checkpoint-1"
    (folder / "sub").mkdir(parents=True)
    for name in ("model.safetensors", "optimizer.pt", "sub/state.json"):
        (folder / name).write_text(name)
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(checkpoints.os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}"))
                        or real_fsync(fd))
    checkpoints.write_manifest(folder)
    names = [Path(path).relative_to(folder).as_posix() if path != str(folder) else "." for path in synced]
    manifest = next(i for i, name in enumerate(names) if name.startswith(".manifest.json"))
    for name in ("model.safetensors", "optimizer.pt", "sub/state.json"):
        assert names.index(name) < manifest, f"{name} must be on disk before the manifest vouches for it"
    assert names[-1] == ".", "the folder's entries are synced after the manifest's rename"
    assert checkpoints.checkpoint_problem(folder) is None


class Killed(BaseException):
    """The process dying mid-save (a BaseException, so that no `except Exception` of the save path swallows it)."""


def kill_while_saving(monkeypatch, folder_name: str, kill_at: int) -> None:
    """Make the `kill_at`-th file the save of `folder_name` writes come out half written, then die; past the last
    file, die while writing the manifest. Files are the Trainer's torch.save and safetensors writes (weights,
    optimizer, scheduler, RNG state, LoRA's trainable tensors)."""
    import safetensors.torch
    import transformers.modeling_utils

    from smollm_trm import trainer as trm_trainer

    written = 0

    def killing(real, path_of):
        def save(*args, **kwargs):
            nonlocal written
            path = str(path_of(args, kwargs))
            result = real(*args, **kwargs)
            if f"{os.sep}{folder_name}{os.sep}" in path:
                if written == kill_at:
                    truncate(Path(path))
                    raise Killed
                written += 1
            return result
        return save

    second = lambda args, kwargs: args[1] if len(args) > 1 else kwargs.get("filename", kwargs.get("f"))  # noqa: E731
    monkeypatch.setattr(torch, "save", killing(torch.save, second))
    monkeypatch.setattr(safetensors.torch, "save_file", killing(safetensors.torch.save_file, second))
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file",
                        killing(transformers.modeling_utils.safe_save_file, second))
    real_manifest = trm_trainer.write_manifest

    def manifest(folder):
        if Path(folder).name == folder_name and written >= kill_at:
            raise Killed  # every file written: killed while writing the manifest
        real_manifest(folder)

    monkeypatch.setattr(trm_trainer, "write_manifest", manifest)


def test_a_kill_at_any_point_of_saving_resumes_the_run_from_the_newest_complete_checkpoint(backbone, tmp_path,
                                                                                          caplog):
    """Seeded kill points inside the real save of checkpoint-3 (each file the Trainer writes, the last one half
    written, or the manifest): the rerun resumes from checkpoint-2 and ends with the weights of the run that was
    never killed."""
    from safetensors.torch import load_file

    data = write_data(tmp_path, "qa")

    def run_args(folder):
        return cli(backbone, data, folder, "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "1")

    reference = tmp_path / "reference"
    train_sft.main(*make_parser().parse_args_and_config(run_args(reference)))
    expected = load_file(reference / "final" / "model.safetensors")
    # every kill point, in a seeded order: each of the 6 files the save writes (weights, LoRA tensors, training args,
    # optimizer, scheduler, RNG state) half written, then the manifest
    for seed, kill_at in enumerate(random.Random(0).sample(range(7), 7)):
        run = tmp_path / f"killed{seed}"
        with pytest.MonkeyPatch.context() as patch:
            kill_while_saving(patch, "checkpoint-3", kill_at)
            with pytest.raises(Killed):
                train_sft.main(*make_parser().parse_args_and_config(run_args(run)))
        assert checkpoint_problem(run / "checkpoint-3") is not None, seed  # what the kill left never counts
        assert all(checkpoint_problem(run / f"checkpoint-{step}") is None for step in (1, 2)), "none lost"
        caplog.clear()
        with caplog.at_level("INFO", logger="smollm_trm.checkpoints"):
            train_sft.main(*make_parser().parse_args_and_config(run_args(run)))
        assert f"Resuming from {run / 'checkpoint-2'}" in caplog.text, seed
        assert checkpoint_problem(run / "checkpoint-3") is None, "checkpoint-3 is written again, whole"
        resumed = load_file(run / "final" / "model.safetensors")
        assert resumed.keys() == expected.keys()
        for name, tensor in expected.items():
            torch.testing.assert_close(resumed[name], tensor, atol=0, rtol=0, msg=f"seed {seed}: {name}")


def test_rotation_orders_by_step_whatever_the_names_sort_and_the_clock_say(tmp_path):
    fake_checkpoints(tmp_path, [2, 9, 10])
    for age, step in enumerate([10, 9, 2]):  # the newest steps were written first: mtime order is reversed
        stamp = 1_000_000 + age * 1000
        for path in [tmp_path / f"checkpoint-{step}", *(tmp_path / f"checkpoint-{step}").rglob("*")]:
            os.utime(path, (stamp, stamp))
    assert [c.name for c in checkpoint_folders(tmp_path)] == ["checkpoint-2", "checkpoint-9", "checkpoint-10"]
    rotate_checkpoints(tmp_path, save_total_limit=2)
    assert [c.name for c in checkpoint_folders(tmp_path)] == ["checkpoint-9", "checkpoint-10"]
