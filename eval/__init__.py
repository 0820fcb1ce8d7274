"""Evaluation of SmolLM-TRM on math word problems: answer extraction, tasks and metrics.

    from eval import extract_answer, load_metric, load_task
    task = load_task("gsm8k", limit=100)
    predictions = [extract_answer(text, task.kind) or "" for text in generations]
    load_metric().compute(predictions=predictions, references=[ex["answer"] for ex in task.examples])
"""

from pathlib import Path

from eval.answers import answers_match, extract_answer, normalize_answer
from eval.tasks import Task, load_task

METRICS_DIR = Path(__file__).resolve().parent / "metrics"


def load_metric(name: str = "exact_match"):
    """The `evaluate` metric shipped in `eval/metrics/<name>/`, loaded from its local folder (works offline)."""
    import evaluate  # deferred: slow to import, and only metric users need it

    folder = METRICS_DIR / name
    if not (folder / f"{name}.py").is_file():
        known = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())
        raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(known)}")
    return evaluate.load(str(folder))


__all__ = ["Task", "answers_match", "extract_answer", "load_metric", "load_task", "normalize_answer"]
