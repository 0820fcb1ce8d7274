"""How many test problems of each depth are written out in a seed's training data: their instructions open a longer
training problem, whose written reasoning then holds their result as one of its lines (a test problem's split comes
from its own text, not from the problems it opens). Arms trained on written reasoning (written CoT, every curriculum
arm) have seen those results; answer-only arms have not.

    python -m experiments.prefix_overlap --config experiments/configs/depth_800.yaml --seeds 0,1,2 \
        --output experiments/results/depth_session20/prefix_overlap.json

Writes the counts as JSON and a Markdown table beside it (one row per seed and question form).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from eval.tasks import load_task
from experiments.run import test_tasks, train_data
from experiments.settings import load_config
from smollm_trm import arith
from smollm_trm.rows import read_rows


def written_results(rows: list[dict]) -> set[str]:
    """The complete questions whose result is a line of some row's written reasoning (line j answers the question
    made of the row's first j instructions)."""
    return {arith.prefix_question(row["question"], line) for row in rows
            for line in range(1, len(row["reasoning"].split("\n")) + 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="an experiment config (its data and test sets)")
    parser.add_argument("--seeds", default="0", help="training seeds, e.g. 0,1,2")
    parser.add_argument("--questions", default="complete,partial", help="question forms (arith.QUESTION_FORMS)")
    parser.add_argument("--output", type=Path, required=True, help="a JSON file; a Markdown table is written beside")
    args = parser.parse_args()
    settings, _ = load_config(args.config)
    # The experiment's own test sets and training files: what its arms are evaluated and trained on.
    tests = {spec["depth"]: load_task(**spec).examples for _, spec in test_tasks("depth", settings)}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for seed in (int(s) for s in args.seeds.split(",")):
            for form in args.questions.split(","):
                folder = train_data("depth", settings, Path(scratch), seed, "worked", form)
                written = written_results(read_rows(folder / "train.jsonl"))
                rows.append({"seed": seed, "questions": form, **{
                    f"depth{depth}": [sum(test["question"] in written for test in problems), len(problems)]
                    for depth, problems in tests.items()}})
    args.output.write_text(json.dumps({"config": str(args.config), "rows": rows}, indent=1))
    depths = list(tests)
    table = ["| seed | questions | " + " | ".join(f"depth {d}" for d in depths) + " |",
             "|---|---|" + "---|" * len(depths)]
    table += [f"| {r['seed']} | {r['questions']} | " + " | ".join("{} of {}".format(*r[f"depth{d}"]) for d in depths)
              + " |" for r in rows]
    args.output.with_suffix(".md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
