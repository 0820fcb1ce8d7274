"""Collect the runs of an experiment: `results.json` (every entry plus mean and std over seeds), `results.md`
(mean +- std over seeds) and plots, all in the experiment's output_dir."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

DEPTH_PLOT = "accuracy_vs_depth.png"
N_CYCLES_PLOT = "trm_n_cycles.png"
TIME_PLOT = "accuracy_vs_time.png"
METRICS = ("accuracy", "mean_tokens_generated", "mean_latency_s")
GROUP_KEYS = ("arm", "test_depth", "n_cycles", "n_supervision_steps", "ablation")
# The trm arm's inference sweeps: each setting varies with the other at its training value.
SWEEPS = {"n_cycles": "n_supervision_steps", "n_supervision_steps": "n_cycles"}


def summarize(entries: list[dict]) -> list[dict]:
    """Mean and std over seeds of each metric, per (arm, test depth, inference n_cycles and N_sup, thought
    ablation); std is the sample standard deviation (0 with one seed). `follows_donor` where an ablation has it."""
    groups: dict[tuple, list[dict]] = {}
    for entry in entries:
        groups.setdefault(tuple(entry.get(key) for key in GROUP_KEYS), []).append(entry)
    summary = []
    for key, group in groups.items():
        row = {**dict(zip(GROUP_KEYS, key)), "primary": group[0]["primary"], "seeds": [e["seed"] for e in group]}
        measured = [*METRICS, *(["follows_donor"] if group[0].get("follows_donor") is not None else [])]
        for metric in measured:
            values = [e[metric] for e in group if e.get(metric) is not None]
            row[f"{metric}_mean"] = statistics.fmean(values)
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        summary.append(row)
    return summary


def percent(row: dict) -> str:
    return f"{100 * row['accuracy_mean']:.1f} ± {100 * row['accuracy_std']:.1f}"


def trained_values(summary: list[dict], arm: str, setting: str) -> set:
    """The training value of an inference `setting` (n_cycles or n_supervision_steps) of `arm`: its primary rows'
    (None for an arm without recursion, or results from before the setting was recorded)."""
    return {r.get(setting) for r in summary if r["arm"] == arm and r["primary"]}


def sweep(summary: list[dict], arm: str, setting: str) -> dict[tuple, dict]:
    """{(value, test depth): row} of `arm` over the inference `setting` (n_cycles or n_supervision_steps), without
    ablations, the other setting at its training value; empty for arms without recursion."""
    other = SWEEPS[setting]
    trained = trained_values(summary, arm, other)
    return {(r[setting], r["test_depth"]): r for r in summary if r["arm"] == arm and r["ablation"] is None
            and r[setting] is not None and r.get(other) in trained}


def depth_label(row: dict, trained_n_sup: set) -> str:
    """A trm row's inference depth, "T" (marked * at training depth) with ", N_sup N" off the arm's trained N_sup
    (`trained_values`); "-" without recursion."""
    if row["n_cycles"] is None:
        return "-"
    n_sup = row.get("n_supervision_steps")
    return f"{row['n_cycles']}{'*' if row['primary'] else ''}" + (
        "" if n_sup in trained_n_sup else f", N_sup {n_sup}")


def depth_tables(summary: list[dict], arms: list[str], train_depth: str) -> list[str]:
    """Arms x test depths at the training depth, then each recurrent arm's n_cycles x test depths and, where swept,
    its n_supervision_steps x test depths."""
    depths = sorted({row["test_depth"] for row in summary})
    primary = {(row["arm"], row["test_depth"]): row for row in summary if row["primary"]}
    header = [f"depth {d}" for d in depths]
    lines = [f"Accuracy (%) on held-out problems, mean ± std over seeds; trained on depths {train_depth}.", "",
             "| arm | " + " | ".join(header) + " |", "|---" * (len(depths) + 1) + "|"]
    lines += [f"| {arm} | " + " | ".join(percent(primary[arm, d]) if (arm, d) in primary else "-" for d in depths)
              + " |" for arm in arms]
    for arm in arms:
        for setting, title in (("n_cycles", "inference depth n_cycles"),
                               ("n_supervision_steps", "inference supervision steps n_supervision_steps")):
            table = sweep(summary, arm, setting)
            values = sorted({value for value, _ in table})
            if not values or (setting == "n_supervision_steps" and len(values) < 2):
                continue
            lines += ["", f"{arm} at {title} (training value marked *):", "",
                      f"| {setting} | " + " | ".join(header) + " |", "|---" * (len(depths) + 1) + "|"]
            trained = trained_values(summary, arm, setting)
            for value in values:
                cells = " | ".join(percent(table[value, d]) if (value, d) in table else "-" for d in depths)
                lines.append(f"| {value}{'*' if value in trained else ''} | {cells} |")
    return lines + diagnostics_table(summary, arms, depths)


def diagnostics_table(summary: list[dict], arms: list[str], depths: list) -> list[str]:
    """Accuracy with the thoughts ablated (eval/diagnostics.py), and how often a transplant's answer is the donor's."""
    ablated = {(row["arm"], row["ablation"], row["test_depth"]): row for row in summary if row["ablation"]}
    if not ablated:
        return []
    lines = ["", "With the thoughts ablated (eval/diagnostics.py): accuracy (%), and for shuffled / transplanted "
             "thoughts the share of answers that are the donor's (in brackets; pairs whose answers differ):", "",
             "| arm | thoughts | " + " | ".join(f"depth {d}" for d in depths) + " |",
             "|---|---" * 1 + "|---" * len(depths) + "|"]
    for arm in arms:
        for ablation in sorted({a for a_arm, a, _ in ablated if a_arm == arm}):
            cells = []
            for depth in depths:
                row = ablated.get((arm, ablation, depth))
                follows = f" [{100 * row['follows_donor_mean']:.0f}]" if row and "follows_donor_mean" in row else ""
                cells.append(percent(row) + follows if row else "-")
            lines.append(f"| {arm} | {ablation} | " + " | ".join(cells) + " |")
    return lines


def correctness(output_dir: Path, entry: dict) -> dict[tuple[int, str], bool]:
    """{(seed, question id): answered right} of one primary entry, from its predictions file."""
    lines = (output_dir / entry["predictions"]).read_text().splitlines()
    return {(entry["seed"], record["id"]): record["correct"] for record in map(json.loads, lines)}


def paired_comparisons(entries: list[dict], pairs: list[list[str]], output_dir: Path) -> list[dict]:
    """For each pair of arms that both ran and each test depth: McNemar's exact test over the questions both
    answered at their training depth, seeds pooled (the same questions for every seed)."""
    from eval.paired import compare

    primary = {}
    for entry in entries:
        if entry["primary"] and "predictions" in entry:
            primary.setdefault((entry["arm"], entry["test_depth"]), []).append(entry)
    comparisons = []
    for first, second in pairs:
        for depth in sorted({d for arm, d in primary if arm == first}, key=lambda d: (d is None, d)):
            if (second, depth) not in primary:
                continue
            answers = [{}, {}]
            for side, arm in enumerate((first, second)):
                for entry in primary[arm, depth]:
                    answers[side].update(correctness(output_dir, entry))
            shared = sorted(answers[0].keys() & answers[1].keys())
            if shared:
                result = compare([answers[0][k] for k in shared], [answers[1][k] for k in shared])
                comparisons.append({"first": first, "second": second, "test_depth": depth, **result})
    return comparisons


def paired_table(comparisons: list[dict]) -> list[str]:
    if not comparisons:
        return []
    lines = ["", "Paired comparisons on the same questions (seeds pooled; eval/paired.py): the accuracy difference, "
             "the questions only one arm answers right, and McNemar's exact two-sided p:", "",
             "| first | second | depth | difference (points) | first only | second only | n | p |",
             "|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        depth = "-" if c["test_depth"] is None else c["test_depth"]
        lines.append(f"| {c['first']} | {c['second']} | {depth} | {100 * c['difference']:+.1f} | {c['first_only']} | "
                     f"{c['second_only']} | {c['n']} | {c['p_value']:.2g} |")
    return lines


def gsm8k_table(summary: list[dict], arms: list[str]) -> list[str]:
    lines = ["Accuracy (%), tokens generated and seconds per answer on GSM8K test, mean ± std over seeds "
             "(trm at its training n_cycles; its sweep below).", "",
             "| arm | n_cycles | accuracy (%) | tokens / answer | s / answer |", "|---|---|---|---|---|"]
    order = {arm: i for i, arm in enumerate(arms)}
    rows = sorted(summary, key=lambda r: (not r["primary"], order[r["arm"]], r["n_cycles"] or 0,
                                          r.get("n_supervision_steps") or 0))
    trained_n_sup = {arm: trained_values(summary, arm, "n_supervision_steps") for arm in arms}
    for row in rows:
        cycles = depth_label(row, trained_n_sup[row["arm"]])
        arm = row["arm"] if row["ablation"] is None else f"{row['arm']}, {row['ablation']} thoughts"
        lines.append(f"| {arm} | {cycles} | {percent(row)} | {row['mean_tokens_generated_mean']:.1f} | "
                     f"{row['mean_latency_s_mean']:.3f} ± {row['mean_latency_s_std']:.3f} |")
    return lines


def markdown(experiment: str, summary: list[dict], arms: list[str], seeds: list[int], train_depth: str,
             comparisons: list[dict]) -> str:
    title = {"depth": "Experiment 1: controlled depth (arith)", "gsm8k": "Experiment 2: GSM8K"}[experiment]
    body = depth_tables(summary, arms, train_depth) if experiment == "depth" else gsm8k_table(summary, arms)
    body += paired_table(comparisons)
    note = ("Every run's accuracy with its 95% Wilson interval, and each example's generation, are in results.json "
            "and evals/.")
    return "\n".join([f"# {title}", "", f"Arms: {', '.join(arms)}; seeds: {seeds}.", "", *body, "", note]) + "\n"


def _axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(6, 4))


def plot_depth(summary: list[dict], arms: list[str], train_depth: str, path: Path) -> None:
    """Accuracy against the test depth, a line per arm (std over seeds as bars), the training depths shaded."""
    plt, figure, axes = _axes()
    for arm in arms:
        rows = sorted((r for r in summary if r["arm"] == arm and r["primary"]), key=lambda r: r["test_depth"])
        axes.errorbar([r["test_depth"] for r in rows], [r["accuracy_mean"] for r in rows],
                      yerr=[r["accuracy_std"] for r in rows], marker="o", capsize=3, label=arm)
    low, _, high = train_depth.partition("-")
    axes.axvspan(int(low) - 0.5, int(high or low) + 0.5, color="grey", alpha=0.15, label="training depths")
    axes.set(xlabel="operations per problem (test depth)", ylabel="accuracy", ylim=(-0.02, 1.02))
    axes.set_xticks(sorted({r["test_depth"] for r in summary}))
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_n_cycles(summary: list[dict], path: Path) -> None:
    """Accuracy against inference n_cycles, a line per recurrent arm and test depth (one test set for gsm8k); arms
    without recursion as dashed levels when there is a single test set."""
    plt, figure, axes = _axes()
    summary = [r for r in summary if r["ablation"] is None]
    at_trained_n_sup = [row for arm in dict.fromkeys(r["arm"] for r in summary)
                        for row in sweep(summary, arm, "n_cycles").values()]
    swept = sorted({(r["arm"], r["test_depth"]) for r in at_trained_n_sup}, key=lambda key: (key[0], key[1] or 0))
    for arm, depth in swept:
        rows = sorted((r for r in at_trained_n_sup if (r["arm"], r["test_depth"]) == (arm, depth)),
                      key=lambda r: r["n_cycles"])
        axes.errorbar([r["n_cycles"] for r in rows], [r["accuracy_mean"] for r in rows],
                      yerr=[r["accuracy_std"] for r in rows], marker="o", capsize=3,
                      label=arm if depth is None else f"{arm}, depth {depth}")
    if {depth for _, depth in swept} == {None}:
        for color, row in enumerate((r for r in summary if r["n_cycles"] is None), start=len(swept)):
            axes.axhline(row["accuracy_mean"], linestyle="--", color=f"C{color}", label=row["arm"])
    trained = [r["n_cycles"] for r in summary if r["n_cycles"] is not None and r["primary"]]
    if trained:
        axes.axvline(trained[0], color="grey", linestyle=":", label="training n_cycles")
    axes.set(xlabel="inference n_cycles (T)", ylabel="accuracy", ylim=(-0.02, 1.02))
    axes.set_xticks(sorted({r["n_cycles"] for r in summary if r["n_cycles"] is not None}))
    axes.legend(fontsize="x-small", ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_time(summary: list[dict], path: Path) -> None:
    """Accuracy against seconds per answer, a point per arm (and per trm n_cycles)."""
    plt, figure, axes = _axes()
    for row in (r for r in summary if r["ablation"] is None):
        label = row["arm"] if row["n_cycles"] is None else (f"{row['arm']} T={row['n_cycles']}" + (
            f" N_sup={row['n_supervision_steps']}" if row.get("n_supervision_steps") is not None else ""))
        axes.errorbar(row["mean_latency_s_mean"], row["accuracy_mean"], xerr=row["mean_latency_s_std"],
                      yerr=row["accuracy_std"], marker="o", capsize=3, label=label)
    axes.set(xlabel="seconds per answer (batched generate time / rows)", ylabel="accuracy", xscale="log")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(output_dir: Path, experiment: str, entries: list[dict], header: dict[str, Any]) -> dict:
    """results.json, results.md and the plots; returns the results.json content."""
    arms = list(dict.fromkeys(entry["arm"] for entry in entries))  # arms given latent steps are rows of their own
    seeds = header["seeds"]
    summary = summarize(entries)
    train_depth = header["settings"]["train_depth"]
    plots = []
    if experiment == "depth":
        plot_depth(summary, arms, train_depth, output_dir / DEPTH_PLOT)
        plots.append(DEPTH_PLOT)
    else:
        plot_time(summary, output_dir / TIME_PLOT)
        plots.append(TIME_PLOT)
    if any(row["n_cycles"] is not None for row in summary):
        plot_n_cycles(summary, output_dir / N_CYCLES_PLOT)
        plots.append(N_CYCLES_PLOT)
    comparisons = paired_comparisons(entries, header["settings"].get("paired_arms") or [], output_dir)
    results = {**header, "results": entries, "summary": summary, "paired": comparisons, "plots": plots}
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (output_dir / "results.md").write_text(markdown(experiment, summary, arms, seeds, train_depth, comparisons))
    return results
