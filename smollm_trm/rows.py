"""Reading rows: JSON and JSON Lines files, folders of them (one split per file), and Hub datasets.

The one reader that training (`smollm_trm.sft_data`) and evaluation (`eval.tasks`) share. A row is a JSON object;
errors name the file, the line and what was wrong.

    load_rows("data/train.jsonl")                 # {"train": rows}: a file is whatever split is asked for
    load_rows("data/")                            # {"train": ..., "test": ...}: train.jsonl, test.json, test/*.json
    load_rows("openai/gsm8k", "test", "main")     # a Hub dataset
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from smollm_trm.hub import is_hub_id

JSON_SUFFIXES = (".json", ".jsonl")
DEFAULT_SPLIT = "train"  # the split a single file is, when no split is asked for


class MissingSplitError(FileNotFoundError, ValueError):
    """A folder without the split asked for: a missing file, and a wrong value of `split`."""


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of one file: a JSON list of objects, one JSON object (MATH's one-problem files), or JSON lines."""
    text = _read_utf8(path)
    start = text.lstrip()[:1]
    if path.suffix == ".json" and start in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            if start == "[" or err.msg != "Extra data":  # several objects: JSON lines in a .json file
                raise ValueError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}.") from err
        else:
            rows = data if isinstance(data, list) else [data]
            for index, row in enumerate(rows):
                _check_is_object(row, f"{path}: item {index}")
            return rows
    return _read_json_lines(path, text)


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:  # its message names neither the file nor the line
        line_number = data.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"{path}: not UTF-8 text at line {line_number} (byte {data[err.start:err.start + 1]!r} at offset "
            f"{err.start}); JSON files must be UTF-8: save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)."
        ) from err


def _read_json_lines(path: Path, text: str) -> list[dict[str, Any]]:
    rows = []
    # Split on "\n" only: GSM8K's text holds U+2028, on which str.splitlines() would also split a row.
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}: invalid JSON at line {line_number}, column {err.colno}: {err.msg}. Expected a JSON list "
                "of objects or one JSON object per line."
            ) from err
        _check_is_object(row, f"{path}: line {line_number}")
        rows.append(row)
    return rows


def _check_is_object(row: Any, where: str) -> None:
    if not isinstance(row, dict):
        raise ValueError(f"{where} is a JSON {type(row).__name__}, expected an object (one row).")


def read_folder(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """One split per `.json` / `.jsonl` file, named after its stem (train.jsonl -> `train`), and per sub-folder of
    one-row JSON files (MATH's layout: test/algebra/1.json, ...)."""
    splits: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in JSON_SUFFIXES:
            rows = read_rows(path)
        elif path.is_dir() and any(path.rglob("*.json")):
            rows = [row for file in sorted(path.rglob("*.json")) for row in read_rows(file)]
        else:
            continue
        if path.stem in splits:
            raise ValueError(f"Folder {str(folder)!r} has two sources for split {path.stem!r}; keep one.")
        splits[path.stem] = rows
    if not splits:
        raise FileNotFoundError(f"Folder {str(folder)!r} holds no .json or .jsonl file.")
    return splits


def load_rows(name: str | Path, split: str | None = None, config_name: str | None = None) -> dict[str, Any]:
    """{split: rows} of every split (or only `split`) of a local file or folder, or of a Hub dataset (rows are then
    a `datasets.Dataset`)."""
    path = Path(name).expanduser()
    if path.is_dir():
        splits = read_folder(path)
    elif path.is_file():
        return {split or DEFAULT_SPLIT: read_rows(path)}
    elif path.suffix in JSON_SUFFIXES or not is_hub_id(str(name)):
        raise FileNotFoundError(f"no file or folder at {str(path)!r}, and {str(name)!r} is not a Hub dataset "
                                "name like 'owner/name'.")
    else:
        return _load_hub(str(name), split, config_name)
    if split is None:
        return splits
    if split not in splits:
        raise MissingSplitError(f"{str(name)!r} has no split {split!r}; it has {sorted(splits)} (no {split}.jsonl, "
                                f"{split}.json or {split}/ there).")
    return {split: splits[split]}


def _load_hub(name: str, split: str | None, config_name: str | None) -> dict[str, Any]:
    import datasets  # deferred: slow to import, and only this branch needs it

    try:
        loaded = datasets.load_dataset(name, config_name, split=split)
    except OSError as err:  # offline (ConnectionError), or no such dataset (DatasetNotFoundError)
        raise ValueError(
            f"{name!r} is not a local file or folder, and loading it from the Hub (config {config_name!r}, split "
            f"{split!r}) failed: {err}. Pass a local .jsonl/.json file or folder, or a Hub name while online."
        ) from err
    return {split: loaded} if split is not None else dict(loaded)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object a line; the folder is created when missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
