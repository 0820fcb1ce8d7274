"""Evaluation tasks: each is a list of examples plus the kind of answer it has.

An example is `{"id": str, "question": str, "answer": str, "reasoning": str | None}`, where `answer` is the
gold final answer already passed through `eval.answers.normalize_answer` for the task's kind.

    from eval.tasks import load_task
    task = load_task("gsm8k", limit=100)                        # ../shared/data/gsm8k/test.jsonl
    task = load_task("gsm8k", path="openai/gsm8k")              # from the Hub, config "main"
    task = load_task("math", path="HuggingFaceH4/MATH-500")     # or a local JSON/JSONL file or folder
    task = load_task("arith", split="train", limit=1000, depth="1-4", seed=0)
"""

from dataclasses import dataclass
from pathlib import Path

from eval.answers import last_boxed, normalize_answer
from smollm_trm import arith, gsm8k
from smollm_trm.named_datasets import SAMPLE_FILE, SAMPLE_SPLIT
from smollm_trm.rows import load_rows, read_rows

# Task name -> answer kind; also the list of known tasks.
TASK_KINDS = {"gsm8k": "number", "math": "latex", "sample": "number", "arith": "number"}


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # an `eval.answers.ANSWER_KINDS` entry
    examples: list[dict]


def _rows(path: str | Path, split: str, hub_config: str | None) -> list:
    """Rows of `split` from a local file (whatever `split`), a local folder holding it, or a Hub dataset name."""
    return load_rows(path, split, hub_config)[split]


def _check_fields(row: dict, fields: tuple[str, ...], task: str, index: int) -> None:
    missing = [field for field in fields if field not in row]
    if missing:
        raise ValueError(f"{task} row {index} lacks field(s) {missing}; it has {sorted(row)}")


def _gsm8k_example(row: dict, index: int, split: str) -> dict:
    """Gold answer from the solution's `#### N` line; reasoning is the solution above it, calculator notes removed."""
    _check_fields(row, ("question", "answer"), "gsm8k", index)
    try:
        reasoning, final = gsm8k.split_solution(row["answer"])
    except ValueError as err:
        raise ValueError(f"gsm8k row {index} (0-based): {err} in its answer {row['answer']!r}") from None
    return {
        "id": f"gsm8k-{split}-{index}",
        "question": row["question"],
        "answer": normalize_answer(final, "number"),
        "reasoning": reasoning,
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


def _examples(
    name: str, split: str, limit: int | None, path: str | Path | None, seed: int, depth: int | tuple[int, int] | str | None,
    steps: str,
) -> list[dict]:
    if name == "arith":
        return arith.make_arith(limit or arith.DEFAULT_SIZE, arith.DEFAULT_DEPTH if depth is None else depth, seed, split,
                                steps)
    if name == "sample":
        return _load_sample(split)
    if name == "gsm8k":
        rows = _rows(gsm8k.LOCAL_DIR if path is None else path, split, gsm8k.HUB_CONFIG)
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
    steps: str = "worked",
) -> Task:
    """Examples of task `name` (see `TASK_KINDS`), the first `limit` of them if given.

    `path` (gsm8k, math) is a local JSON/JSONL file, a folder holding `{split}.jsonl`, or a Hub dataset name.
    `seed` and `depth` (an int, `(low, high)` or `"low-high"`) shape the generated arith task, `steps` the style of
    its reasoning lines (`smollm_trm.arith.STEP_STYLES`; the questions and answers are the same in each).
    """
    if name not in TASK_KINDS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASK_KINDS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of examples or None, got {limit}")
    if depth is not None and name != "arith":
        raise ValueError(f"depth only applies to the arith task, got depth={depth!r} for {name!r}")
    if steps != "worked" and name != "arith":
        raise ValueError(f"steps only applies to the arith task, got steps={steps!r} for {name!r}")
    if path is not None and name not in ("gsm8k", "math"):
        raise ValueError(f"path only applies to the gsm8k and math tasks, got path={str(path)!r} for {name!r}")
    examples = _examples(name, split, limit, path, seed, depth, steps)[:limit]
    if not examples:
        raise ValueError(f"task {name!r} has no examples in split {split!r} (path={str(path)!r}); check the data file")
    return Task(name=name, kind=TASK_KINDS[name], examples=examples)
