"""The prepared datasets of a run, kept in its output_dir so that a resumed run reads them back instead of converting
and tokenizing its rows again (on the depth task's 245k curriculum rows, about a minute of every resumed GPU call).

What is kept: our rows (`PreparedData`, which the demo answers read) and TRL's tokenized rows (which the trainer
reads, with TRL's preparation then skipped). They are used only when everything they were made from is unchanged:
the data files' bytes, the data and TRL settings, the tokenizer, the package's code and the library versions (the
key). Rows from the Hub are not kept: `datasets` caches those itself; nor are a distributed run's, whose ranks would
have to agree on every hit (a rank that prepared while another read back would meet TRL's barriers alone). The folder
is written whole or not at all (a temporary folder renamed), and removed once the run has saved its final model; a
failure to write it costs the next resume its shortcut, never the run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FOLDER = "prepared_data"
TRL_PREPARATION_FIELDS = ("max_length", "packing", "packing_strategy", "padding_free", "completion_only_loss",
                          "assistant_only_loss", "dataset_text_field", "eos_token", "pad_token", "eval_packing",
                          "truncation_mode", "dataset_kwargs", "shuffle_dataset", "chat_template_path")
PACKAGE = Path(__file__).resolve().parent
MODEL_CODE = ("configuration_smollm_trm.py", "modeling_smollm_trm.py")  # beside the package: the think tokens' code


def cache_key(data_args, training_args, tokenizer, preparation: dict[str, Any]) -> str | None:
    """The digest of everything the prepared rows depend on; None when they cannot be kept (rows from the Hub, a
    tokenizer without a serialised fast backend)."""
    import datasets
    import transformers
    import trl

    data = Path(data_args.dataset_name).expanduser()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not data.exists() or backend is None or training_args.world_size > 1:
        return None
    digest = hashlib.sha256()
    for path in [data] if data.is_file() else sorted(p for p in data.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(data) if data.is_dir() else path.name).encode())
        digest.update(path.read_bytes())
    for path in [*sorted(PACKAGE.rglob("*.py")), *(PACKAGE.parent / name for name in MODEL_CODE)]:  # the conversion
        digest.update(path.read_bytes() if path.is_file() else b"")
    settings = {
        "data": {k: v for k, v in dataclasses.asdict(data_args).items() if k != "dataset_name"},
        "trl": {name: getattr(training_args, name, None) for name in TRL_PREPARATION_FIELDS},
        "preparation": preparation,
        "tokenizer": [backend.to_str(), tokenizer.chat_template, len(tokenizer)],
        "versions": [datasets.__version__, transformers.__version__, trl.__version__],
    }
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def load_prepared(output_dir: str, key: str | None):
    """(our `PreparedData`, TRL's {"train", "eval"} datasets) kept under this key, or None."""
    import datasets

    from smollm_trm.sft_data import PreparedData

    folder = Path(output_dir) / FOLDER
    if key is None or not (folder / "key.json").is_file():
        return None
    saved = json.loads((folder / "key.json").read_text())
    if saved["key"] != key:
        logger.info("The prepared data in %s were made from other data or settings: preparing again.", folder)
        return None

    def part(kind: str, name: str):
        path = folder / kind / name
        return datasets.load_from_disk(str(path)) if path.exists() else None

    ours = PreparedData(train=part("ours", "train"), eval=part("ours", "eval"),
                        skipped={split: [tuple(bad) for bad in rows] for split, rows in saved["skipped"].items()})
    logger.info("Read the prepared data back from %s (%d train rows).", folder, len(ours.train))
    return ours, {"train": part("trl", "train"), "eval": part("trl", "eval")}


def save_prepared(output_dir: str, key: str | None, ours, trl_train, trl_eval) -> None:
    """Keep both preparations under `key`: written to a temporary folder, then renamed into place."""
    if key is None:
        return
    folder = Path(output_dir) / FOLDER
    for stale in folder.parent.glob(f"{FOLDER}.tmp-*"):  # a killed run's
        shutil.rmtree(stale, ignore_errors=True)
    staging = folder.with_name(f"{FOLDER}.tmp-{os.getpid()}")
    try:
        for kind, parts in (("ours", {"train": ours.train, "eval": ours.eval}),
                            ("trl", {"train": trl_train, "eval": trl_eval})):
            for name, dataset in parts.items():
                if dataset is not None:
                    dataset.save_to_disk(str(staging / kind / name))
        (staging / "key.json").write_text(json.dumps({"key": key, "skipped": ours.skipped}))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
    except OSError as error:
        logger.warning("Could not keep the prepared data in %s (%s): a resumed run will prepare them again.", folder,
                       error)
        shutil.rmtree(staging, ignore_errors=True)


def remove_prepared(output_dir: str) -> None:
    shutil.rmtree(Path(output_dir) / FOLDER, ignore_errors=True)
