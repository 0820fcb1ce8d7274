r"""Evaluation of SmolLM-TRM on math word problems: answer extraction, tasks and metrics.

    from eval import extract_answer, load_metric, load_task
    task = load_task("gsm8k", limit=100)
    predictions = [extract_answer(text, task.kind) or "" for text in generations]
    load_metric().compute(predictions=predictions, references=[ex["answer"] for ex in task.examples])

From the command line, `python -m eval` runs models (SmolLM-TRM folders, plain backbones as baselines, or the
embedded `embedded:smollm2`) on a task and writes per-example JSONL, results.json, results.md and, when TRM models
run at several depths, a plot of accuracy against depth (see `eval/__main__.py` for more command lines):

    python -m eval --model embedded:smollm2 --task sample --output_dir runs/eval-sample
    python -m eval --model runs/trm --model embedded:smollm2 --task gsm8k --limit 200 \
        --n_cycles 1,2,3,6,12 --n_supervision_steps 1,2 --output_dir runs/eval-gsm8k --write_card
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
