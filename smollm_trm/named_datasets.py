"""The datasets training knows by a short name: `sample` (10 shipped demo problems), `gsm8k` (the local copy beside
the checkout, else the Hub) and `arith` (generated multi-step arithmetic, written once per run)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from smollm_trm import arith, gsm8k
from smollm_trm.hub import is_hub_id
from smollm_trm.rows import write_jsonl

SAMPLE_FILE = Path(__file__).resolve().parent / "data" / "sample.json"
SAMPLE_SPLIT = "test"
ARITH_FOLDER = "arith_data"  # inside the run's output_dir
NAMES = ("sample", "gsm8k", "arith")


def hub_dataset(name: str | None) -> str | None:
    """The Hub dataset a training set is, for a card's `datasets:` (None for local files and generated sets)."""
    if name == "gsm8k":
        return gsm8k.HUB_ID
    return name if name is not None and name not in NAMES and is_hub_id(name) else None


def resolve_dataset(data_args, output_dir: str | Path):
    """The data arguments (`SFTDataArguments`) with a short name turned into what `load_rows` reads."""
    name = data_args.dataset_name
    if name == "sample":
        return dataclasses.replace(data_args, dataset_name=str(SAMPLE_FILE))
    if name == "gsm8k":
        if gsm8k.LOCAL_DIR.is_dir():
            return dataclasses.replace(data_args, dataset_name=str(gsm8k.LOCAL_DIR))
        return dataclasses.replace(data_args, dataset_name=gsm8k.HUB_ID, dataset_config=gsm8k.HUB_CONFIG)
    if name == "arith":
        folder = write_arith(Path(output_dir) / ARITH_FOLDER, data_args.split_seed)
        return dataclasses.replace(data_args, dataset_name=str(folder))
    return data_args


def write_arith(folder: Path, seed: int) -> Path:
    """A train and a test split of generated arithmetic (their questions never overlap)."""
    for split in arith.SPLITS:
        write_jsonl(folder / f"{split}.jsonl", arith.make_arith(arith.DEFAULT_SIZE, arith.DEFAULT_DEPTH, seed, split))
    return folder
