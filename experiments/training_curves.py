"""Training curves from the harness's run logs: one metric of every run against the optimizer step, as a Markdown
table and a plot. The logs are `<output_dir>/logs/<arm>-seed<S>.log` (train_sft.py's output); a run resumed over
several device calls has one log per call, and giving the calls' folders in order joins them (a later call's value
at a step replaces an earlier one: it resumed from the checkpoint before it).

    python -m experiments.training_curves CALL1/logs CALL2/logs ... --metric probe_accuracy --every 50 \\
        --plot curves.png
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path


def logged_steps(log: Path, metric: str, max_steps: int) -> dict[int, float]:
    """{step: value} of `metric` in the training lines of one log (`{'loss': ...}` dicts; eval lines are skipped).
    The logs hold no step: it is the logged epoch times `max_steps`, right for a run whose one epoch is its
    `max_steps` (the curriculum's sampler draws exactly that), not for a run of several epochs."""
    values = {}
    for line in log.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line.startswith("{'loss'"):
            continue
        record = ast.literal_eval(line)
        if metric in record:
            values[round(float(record["epoch"]) * max_steps)] = float(record[metric])
    return values


def joined_runs(log_dirs: list[Path], metric: str, max_steps: int) -> dict[str, dict[int, float]]:
    runs: dict[str, dict[int, float]] = {}
    for log_dir in log_dirs:
        for log in sorted(log_dir.glob("*.log")):
            runs.setdefault(log.stem, {}).update(logged_steps(log, metric, max_steps))
    return {name: dict(sorted(values.items())) for name, values in sorted(runs.items()) if values}


def markdown(runs: dict[str, dict[int, float]], metric: str, every: int) -> str:
    steps = sorted({step for values in runs.values() for step in values if step % every == 0})
    lines = [f"| run ({metric}) | " + " | ".join(str(step) for step in steps) + " |",
             "|---|" + "---|" * len(steps)]
    for name, values in runs.items():
        lines.append(f"| {name} | " + " | ".join(f"{values[s]:.3f}" if s in values else "" for s in steps) + " |")
    return "\n".join(lines)


def plot(runs: dict[str, dict[int, float]], metric: str, path: Path, stage_steps: int | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5))
    for name, values in runs.items():
        axes.plot(list(values), list(values.values()), marker=".", label=name)
    if stage_steps:
        for boundary in range(stage_steps, max(max(v) for v in runs.values()) + 1, stage_steps):
            axes.axvline(boundary, color="grey", linewidth=0.5, linestyle=":")
    axes.set_xlabel("optimizer step" + (f" (dotted: a stage every {stage_steps})" if stage_steps else ""))
    axes.set_ylabel(metric)
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log_dirs", nargs="+", type=Path, help="Folders of run logs, in the order of the calls.")
    parser.add_argument("--metric", default="probe_accuracy")
    parser.add_argument("--max_steps", type=int, default=1200,
                        help="Optimizer steps of one epoch of the runs (a curriculum run's max_steps): step = epoch x this.")
    parser.add_argument("--every", type=int, default=50, help="The table's step interval.")
    parser.add_argument("--stage_steps", type=int, default=None, help="Mark curriculum stages on the plot.")
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    runs = joined_runs(args.log_dirs, args.metric, args.max_steps)
    if not runs:
        parser.error(f"no training line with {args.metric!r} in {[str(d) for d in args.log_dirs]}")
    print(markdown(runs, args.metric, args.every))
    if args.plot is not None:
        plot(runs, args.metric, args.plot, args.stage_steps)


if __name__ == "__main__":
    main()
