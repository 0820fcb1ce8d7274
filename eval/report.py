"""Write eval runs out: per-example JSONL, results.json, a Markdown table, a depth plot, and model-card metadata.

    output_dir/
        <model>[__T<t>_N<n>].jsonl   one line per example (prompt, generation, extracted vs gold, tokens, latency)
        results.json                 every run's metrics, with the settings and library versions
        results.md                   the runs side by side
        accuracy_vs_depth.png        only when a TRM model ran at two or more depths

`write_model_card(folder, runs, ...)` puts a model's results into its README.md as `model-index` metadata, through
the project's one card writer (`smollm_trm.hub`).
"""

import itertools
import json
import platform
import re
import subprocess
from pathlib import Path

from eval.runner import Run
from smollm_trm.hub import add_eval_results
from smollm_trm.rows import write_jsonl

PLOT_FILE = "accuracy_vs_depth.png"
BASELINE_DEPTH = "- (no recursion: run once)"
# Hub dataset ids of the tasks, for the card's `dataset.type`; arith and sample are generated/shipped here.
TASK_DATASETS = {"gsm8k": "openai/gsm8k", "math": "HuggingFaceH4/MATH-500", "sample": "sample", "arith": "arith"}


def slug(name: str) -> str:
    """A file-name-safe form of a model name: `embedded:smollm2` -> `embedded-smollm2`, `runs/trm/` -> `trm`."""
    tail = Path(name.rstrip("/")).name if not name.startswith("embedded:") else name
    return re.sub(r"[^\w.-]+", "-", tail).strip("-") or "model"


def run_files(runs: list[Run]) -> list[str]:
    """A distinct JSONL file name per run; a model whose name slugs like an earlier model's gets `-2`, `-3`, ..."""
    stems: dict[str, str] = {}  # model name -> file stem
    names = []
    for run in runs:
        if run.model.name not in stems:
            base, taken = slug(run.model.name), set(stems.values())
            stems[run.model.name] = next(s for i in itertools.count(1) if (s := base if i == 1 else f"{base}-{i}") not in taken)
        depth = "" if run.depth is None else f"__T{run.depth.n_cycles}_N{run.depth.n_supervision_steps}"
        ablation = f"__{run.ablation}" if run.ablation else ""
        names.append(f"{stems[run.model.name]}{depth}{ablation}.jsonl")
    return names


def versions() -> dict:
    """Library versions and the project commit, so a results file says what produced it."""
    import huggingface_hub
    import torch
    import transformers

    try:
        root = Path(__file__).resolve().parent.parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an installed package)
        commit = None
    return {
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "huggingface_hub": huggingface_hub.__version__, "project_commit": commit,
    }


def run_summary(run: Run, file: str) -> dict:
    model = run.model
    summary = {
        "model": model.name, "source": model.source, "gguf_file": model.gguf_file, "kind": model.kind,
        "num_parameters": model.num_parameters, "depth": None, "ablation": run.ablation, "predictions_file": file,
        **run.metrics,
    }
    if run.depth is not None:
        summary["depth"] = {
            "n_cycles": run.depth.n_cycles, "n_supervision_steps": run.depth.n_supervision_steps,
            "n_latent_steps": model.config.n_latent_steps, "effective_depth": run.depth.effective(model.config),
        }
    return summary


def depth_cell(run: Run) -> str:
    if run.depth is None:
        return BASELINE_DEPTH
    return f"{run.depth.label} (eff. {run.depth.effective(run.model.config)})"


def markdown_table(task: dict, summaries: list[dict], runs: list[Run]) -> str:
    """The runs side by side; accuracy with its 95% Wilson interval (asymmetric, so shown as a range)."""
    lines = [
        f"# {task['name']}: {summaries[0]['n']} examples",
        "",
        "Depth (T cycles x N_sup supervision steps) applies to TRM models only; other models run once. "
        "Time to answer is the batch's generate() time divided by its rows.",
        "",
        "| model | kind | depth | accuracy (95% CI) | mean tokens | mean s / answer |",
        "|---|---|---|---|---|---|",
    ]
    for summary, run in zip(summaries, runs):
        accuracy = f"{summary['accuracy']:.1%} ({summary['ci_low']:.1%}-{summary['ci_high']:.1%})"
        kind = summary["kind"] if run.ablation is None else f"{summary['kind']}, {run.ablation} thoughts"
        if summary.get("follows_donor") is not None:
            kind += f" (follows the donor: {summary['follows_donor']:.0%})"
        lines.append(
            f"| {summary['model']} | {kind} | {depth_cell(run)} | {accuracy} | "
            f"{summary['mean_tokens_generated']:.1f} | {summary['mean_latency_s']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def _depth_lines(runs: list[Run]) -> dict[str, list[Run]]:
    """TRM runs grouped into plot lines: one per model and N_sup, so that T=2,N_sup=1 and T=1,N_sup=2 (the same
    effective depth) stay apart; each line sorted by depth."""
    lines: dict[str, list[Run]] = {}
    for run in runs:
        if run.depth is not None and run.ablation is None:
            lines.setdefault(f"{run.model.name} (N_sup={run.depth.n_supervision_steps})", []).append(run)
    return {label: sorted(line, key=lambda r: r.depth.n_cycles) for label, line in lines.items()}


def plot_depth(runs: list[Run], path: Path) -> bool:
    """Accuracy (with CI bars) against effective TRM depth, a line per TRM model and N_sup, baselines as dashed
    levels (ablated runs are left out). Draws nothing and returns False unless some model ran at two or more depths."""
    runs = [run for run in runs if run.ablation is None]
    if not any(sum(r.model.name == run.model.name for r in runs) >= 2 for run in runs if run.depth is not None):
        return False
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers or in CI
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for label, line in _depth_lines(runs).items():
        accuracy = [r.metrics["accuracy"] for r in line]
        # max(0, .): at 0% or 100% the Wilson bound equals the accuracy up to rounding, which may go negative
        below = [max(0.0, r.metrics["accuracy"] - r.metrics["ci_low"]) for r in line]
        above = [max(0.0, r.metrics["ci_high"] - r.metrics["accuracy"]) for r in line]
        depths = [r.depth.effective(r.model.config) for r in line]
        axes.errorbar(depths, accuracy, yerr=[below, above], marker="o", capsize=3, label=label)
    for run in runs:
        if run.depth is None:
            axes.axhline(run.metrics["accuracy"], linestyle="--", color="grey", linewidth=1)
            axes.annotate(f"{run.model.name} (baseline)", (0.01, run.metrics["accuracy"]),
                          xycoords=("axes fraction", "data"), fontsize=8, color="grey", va="bottom")
    axes.set_xscale("log", base=2)
    depths = sorted({r.depth.effective(r.model.config) for r in runs if r.depth is not None})
    axes.set_xticks(depths, [str(depth) for depth in depths])  # the depths that ran, not powers of two
    axes.minorticks_off()
    axes.set_xlabel("TRM effective depth  N_sup * T * (n+1) * layers")
    axes.set_ylabel("accuracy (95% CI)")
    axes.set_ylim(-0.02, 1.02)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def paired_with_first(summaries: list[dict], runs: list[Run]) -> list[dict]:
    """Every later run against the first, question by question (McNemar's exact test, `eval.paired`)."""
    from eval.paired import compare

    first = [record["correct"] for record in runs[0].records]
    return [{"first": summaries[0]["predictions_file"], "second": summary["predictions_file"],
             **compare(first, [record["correct"] for record in run.records])}
            for summary, run in zip(summaries[1:], runs[1:])]


def paired_lines(comparisons: list[dict]) -> list[str]:
    if not comparisons:
        return []
    lines = ["", f"Against {comparisons[0]['first']}, on the same questions: the accuracy difference, the questions "
             "only one of the two answers right, and McNemar's exact two-sided p.", "",
             "| run | difference (points) | first only | this only | p |", "|---|---|---|---|---|"]
    lines += [f"| {c['second']} | {100 * -c['difference']:+.1f} | {c['first_only']} | {c['second_only']} | "
              f"{c['p_value']:.2g} |" for c in comparisons]
    return lines


def write_outputs(output_dir: Path, task: dict, settings: dict, runs: list[Run]) -> dict:
    """All output files of an evaluation; returns the results.json content."""
    output_dir.mkdir(parents=True, exist_ok=True)
    files = run_files(runs)
    for run, file in zip(runs, files):
        write_jsonl(output_dir / file, run.records)
    summaries = [run_summary(run, file) for run, file in zip(runs, files)]
    plot = PLOT_FILE if plot_depth(runs, output_dir / PLOT_FILE) else None
    paired = paired_with_first(summaries, runs)
    results = {"task": task, "settings": settings, "versions": versions(), "runs": summaries, "paired": paired,
               "plot": plot}
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown_table(task, summaries, runs)
    (output_dir / "results.md").write_text(table + "\n".join(paired_lines(paired)) + ("\n" if paired else ""))
    return results


# ---------------------------------------------------------------------------------------------------- model card


def eval_results(runs: list[Run], task: dict):
    """One `EvalResult` per run of a model; the depth goes into `metric_config` so each depth is its own entry."""
    from huggingface_hub import EvalResult

    results = []
    for run in (run for run in runs if run.ablation is None):  # ablations are diagnostics, not the model's score
        depth = None if run.depth is None else f"n_cycles={run.depth.n_cycles},n_supervision_steps={run.depth.n_supervision_steps}"
        results.append(EvalResult(
            task_type="text-generation", task_name="Math word problems",
            dataset_type=TASK_DATASETS[task["name"]], dataset_name=task["name"], dataset_split=task["split"],
            dataset_args={key: task[key] for key in ("limit", "seed", "depth") if task.get(key) is not None} or None,
            metric_type="accuracy", metric_name="accuracy" if depth is None else f"accuracy ({run.depth.label})",
            metric_config=depth, metric_value=round(run.metrics["accuracy"], 4),
        ))
    return results


def write_model_card(folder: Path, runs: list[Run], task: dict) -> Path:
    """Put the runs' results into `folder/README.md` (see `smollm_trm.hub.add_eval_results`)."""
    return add_eval_results(folder, eval_results(runs, task))


__all__ = ["write_model_card", "write_outputs"]
