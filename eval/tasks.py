"""Evaluation tasks: each is a list of examples plus the kind of answer it has.

An example is `{"id": str, "question": str, "answer": str, "reasoning": str | None}`, where `answer` is the
gold final answer already passed through `eval.answers.normalize_answer` for the task's kind.

    from eval.tasks import load_task
    task = load_task("gsm8k", limit=100)                        # ../shared/data/gsm8k/test.jsonl
    task = load_task("gsm8k", path="openai/gsm8k")              # from the Hub, config "main"
    task = load_task("math", path="HuggingFaceH4/MATH-500")     # or a local JSON/JSONL file or folder
    task = load_task("arith", split="train", limit=1000, depth="1-4", seed=0)
"""

import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from eval.answers import last_boxed, normalize_answer, split_gsm8k

# Task name -> answer kind; also the list of known tasks.
TASK_KINDS = {"gsm8k": "number", "math": "latex", "sample": "number", "arith": "number"}
GSM8K_DIR = Path(__file__).resolve().parent.parent.parent / "shared/data/gsm8k"
GSM8K_HUB_CONFIG = "main"
SAMPLE_FILE = Path(__file__).resolve().parent / "data/sample.json"
SAMPLE_SPLIT = "test"

ARITH_SPLITS = ("train", "test")
ARITH_TEST_PERCENT = 20  # share of all possible questions that belong to the test split
ARITH_DEFAULT_SIZE = 500
ARITH_DEFAULT_DEPTH = (1, 4)
ARITH_START = (1, 20)  # range of the starting value
ARITH_TERM = (1, 20)  # range of what is added or subtracted
ARITH_FACTOR = (2, 9)  # range of multipliers and divisors
ARITH_MAX_VALUE = 999  # no intermediate value goes above this (nor below 0)
ARITH_TRIES_PER_EXAMPLE = 100  # before giving up on finding n distinct questions

_CALCULATOR_ANNOTATION = re.compile(r"<<.*?>>")
_HUB_NAME = re.compile(r"[\w.-]+/[\w.-]+")
_LOCAL_SUFFIXES = (".json", ".jsonl")


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # an `eval.answers.ANSWER_KINDS` entry
    examples: list[dict]


def read_rows(file: Path) -> list[dict]:
    """Rows of a JSONL file, or of a JSON file holding a list of rows or a single row (MATH's layout)."""
    if file.suffix == ".jsonl":
        # Split on "\n" only: GSM8K's text holds U+2028, on which str.splitlines() would also split a row.
        return [json.loads(line) for line in file.read_text().split("\n") if line.strip()]
    data = json.loads(file.read_text())
    if isinstance(data, dict):
        return [data]
    if not isinstance(data, list):
        raise ValueError(f"{file} holds a JSON {type(data).__name__}; expected a list of rows or one row")
    return data


def _read_split_folder(folder: Path, split: str) -> list[dict]:
    """`{split}.jsonl`, `{split}.json`, or a `{split}/` folder of one-problem JSON files (MATH's layout)."""
    for file in (folder / f"{split}.jsonl", folder / f"{split}.json"):
        if file.is_file():
            return read_rows(file)
    if (folder / split).is_dir():
        return [row for file in sorted((folder / split).rglob("*.json")) for row in read_rows(file)]
    raise FileNotFoundError(f"no {split}.jsonl, {split}.json or {split}/ in {folder}; pick another split or path")


def _hub_rows(name: str, config: str | None, split: str) -> list[dict]:
    import datasets  # deferred: slow to import, and only this branch needs it

    try:
        return list(datasets.load_dataset(name, config, split=split))
    except OSError as error:  # ConnectionError when offline, FileNotFoundError when the name is wrong
        raise ValueError(
            f"{name!r} is not a local file or folder, and loading it from the Hub (config {config!r}, split "
            f"{split!r}) failed: {error}. Pass a local .jsonl/.json file or folder, or a Hub name while online."
        ) from error


def _rows(path: str | Path, split: str, hub_config: str | None) -> list[dict]:
    """Rows from a local file (whatever `split`), a local folder holding the split, or a Hub dataset name."""
    local = Path(path).expanduser()
    if local.is_file():
        return read_rows(local)
    if local.is_dir():
        return _read_split_folder(local, split)
    if _HUB_NAME.fullmatch(str(path)) and local.suffix not in _LOCAL_SUFFIXES:
        return _hub_rows(str(path), hub_config, split)
    raise FileNotFoundError(f"no file or folder at {local}, and {str(path)!r} is not a Hub name like 'owner/name'")


def _check_fields(row: dict, fields: tuple[str, ...], task: str, index: int) -> None:
    missing = [field for field in fields if field not in row]
    if missing:
        raise ValueError(f"{task} row {index} lacks field(s) {missing}; it has {sorted(row)}")


def _gsm8k_example(row: dict, index: int, split: str) -> dict:
    """Gold answer from the solution's `#### N` line; reasoning is the solution above it, calculator notes removed."""
    _check_fields(row, ("question", "answer"), "gsm8k", index)
    parts = split_gsm8k(row["answer"])
    if parts is None:
        raise ValueError(f"gsm8k row {index} (0-based) has no final '#### N' line in its answer: {row['answer']!r}")
    reasoning, final = parts
    return {
        "id": f"gsm8k-{split}-{index}",
        "question": row["question"],
        "answer": normalize_answer(final, "number"),
        "reasoning": _CALCULATOR_ANNOTATION.sub("", reasoning),
    }


def _math_example(row: dict, index: int, split: str) -> dict:
    """Gold answer from the `answer` field if there is one, else the solution's last `\\boxed{}`."""
    _check_fields(row, ("problem",), "math", index)
    answer = row.get("answer") or last_boxed(row.get("solution") or "")
    if not answer:
        raise ValueError(f"math row {index} (0-based) has neither an 'answer' nor a \\boxed{{}} in its 'solution'")
    return {
        "id": str(row.get("unique_id", f"math-{split}-{index}")),
        "question": row["problem"],
        "answer": normalize_answer(answer, "latex"),
        "reasoning": row.get("solution"),
    }


def _load_sample(split: str) -> list[dict]:
    if split != SAMPLE_SPLIT:
        raise ValueError(f"the sample task has only the {SAMPLE_SPLIT!r} split, got split={split!r}")
    rows = read_rows(SAMPLE_FILE)
    return [
        {"id": f"sample-{i}", "question": row["question"], "answer": normalize_answer(row["answer"]), "reasoning": None}
        for i, row in enumerate(rows)
    ]


def parse_depth(depth: int | tuple[int, int] | str) -> tuple[int, int]:
    """`3`, `(1, 4)` or the command-line forms `"3"` / `"1-4"` -> an inclusive (low, high) range of steps."""
    if isinstance(depth, str):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", depth)
        if match is None:
            raise ValueError(f"depth must look like '3' or '1-4', got {depth!r}")
        depth = (int(match.group(1)), int(match.group(2) or match.group(1)))
    low, high = (depth, depth) if isinstance(depth, int) else depth
    if not 1 <= low <= high:
        raise ValueError(f"depth needs 1 <= low <= high, got {depth!r}")
    return low, high


def _arith_step(rng: random.Random, value: int) -> tuple[str, str, int]:
    """One operation that keeps the value a bounded non-negative integer: (instruction, worked line, new value)."""
    term, factor = rng.randint(*ARITH_TERM), rng.randint(*ARITH_FACTOR)
    options = []
    if value + term <= ARITH_MAX_VALUE:
        options.append((f"Add {term}.", f"{value}+{term}={value + term}", value + term))
    if value - term >= 0:
        options.append((f"Subtract {term}.", f"{value}-{term}={value - term}", value - term))
    if value * factor <= ARITH_MAX_VALUE:
        options.append((f"Multiply by {factor}.", f"{value}*{factor}={value * factor}", value * factor))
    divisors = [d for d in range(ARITH_FACTOR[0], ARITH_FACTOR[1] + 1) if value > 0 and value % d == 0]
    if divisors:
        divisor = rng.choice(divisors)
        options.append((f"Divide by {divisor}.", f"{value}/{divisor}={value // divisor}", value // divisor))
    return rng.choice(options)  # never empty: when adding overflows, value > MAX - term, so subtracting works


def _arith_problem(rng: random.Random, depth: int) -> dict:
    value = rng.randint(*ARITH_START)
    instructions, lines = [f"Start with {value}."], []
    for _ in range(depth):
        instruction, line, value = _arith_step(rng, value)
        instructions.append(instruction)
        lines.append(line)
    question = " ".join(instructions + ["What is the result?"])
    return {"question": question, "answer": str(value), "reasoning": "\n".join(lines)}


def arith_split_of(question: str) -> str:
    """The split a question belongs to, from a hash of its text: the same for every seed and depth, so never both."""
    bucket = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big") % 100
    return "test" if bucket < ARITH_TEST_PERCENT else "train"


def make_arith(n: int, depth: int | tuple[int, int], seed: int, split: str) -> list[dict]:
    """`n` distinct multi-step arithmetic problems of `split`, each `depth` operations long (or a range of depths)."""
    if split not in ARITH_SPLITS:
        raise ValueError(f"arith split must be one of {ARITH_SPLITS}, got {split!r}")
    if n < 1:
        raise ValueError(f"arith needs n >= 1 examples, got n={n}")
    low, high = parse_depth(depth)
    rng = random.Random(seed)
    examples, seen = [], set()
    for _ in range(ARITH_TRIES_PER_EXAMPLE * n):
        problem = _arith_problem(rng, rng.randint(low, high))
        if problem["question"] in seen or arith_split_of(problem["question"]) != split:
            continue
        seen.add(problem["question"])
        examples.append({"id": f"arith-{split}-{seed}-{len(examples)}", **problem})
        if len(examples) == n:
            return examples
    raise ValueError(
        f"found only {len(examples)} distinct {split} questions of depth {low}-{high} in "
        f"{ARITH_TRIES_PER_EXAMPLE * n} tries, asked for {n}; ask for fewer or raise the depth"
    )


def _examples(
    name: str, split: str, limit: int | None, path: str | Path | None, seed: int, depth: int | tuple[int, int] | str | None
) -> list[dict]:
    if name == "arith":
        return make_arith(limit or ARITH_DEFAULT_SIZE, ARITH_DEFAULT_DEPTH if depth is None else depth, seed, split)
    if name == "sample":
        return _load_sample(split)
    if name == "gsm8k":
        rows = _rows(GSM8K_DIR if path is None else path, split, GSM8K_HUB_CONFIG)
        return [_gsm8k_example(row, i, split) for i, row in enumerate(rows)]
    if path is None:
        raise ValueError("the math task needs path=: a local JSON/JSONL file or folder, or a Hub name")
    return [_math_example(row, i, split) for i, row in enumerate(_rows(path, split, None))]


def load_task(
    name: str,
    *,
    split: str = "test",
    limit: int | None = None,
    path: str | Path | None = None,
    seed: int = 0,
    depth: int | tuple[int, int] | str | None = None,
) -> Task:
    """Examples of task `name` (see `TASK_KINDS`), the first `limit` of them if given.

    `path` (gsm8k, math) is a local JSON/JSONL file, a folder holding `{split}.jsonl`, or a Hub dataset name.
    `seed` and `depth` (an int, `(low, high)` or `"low-high"`) shape the generated arith task.
    """
    if name not in TASK_KINDS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASK_KINDS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of examples or None, got {limit}")
    if depth is not None and name != "arith":
        raise ValueError(f"depth only applies to the arith task, got depth={depth!r} for {name!r}")
    if path is not None and name not in ("gsm8k", "math"):
        raise ValueError(f"path only applies to the gsm8k and math tasks, got path={str(path)!r} for {name!r}")
    examples = _examples(name, split, limit, path, seed, depth)[:limit]
    if not examples:
        raise ValueError(f"task {name!r} has no examples in split {split!r} (path={str(path)!r}); check the data file")
    return Task(name=name, kind=TASK_KINDS[name], examples=examples)
