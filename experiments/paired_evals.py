"""Compare two arms evaluated apart (for example one on the GPU, one on the CPU) on the same questions, test by test:
accuracy of each and McNemar's exact test (eval/paired.py) over the questions in the same order.

    python -m experiments.paired_evals FIRST.jsonl:SECOND.jsonl [...] --names trm,pause --output paired.json

Each argument pairs two generation files of `python -m eval` (or of the experiment's evals/) for one test; the
questions must be the same, in the same order, which the script checks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from eval.paired import compare
from smollm_trm.rows import read_rows


def correctness(path: Path) -> tuple[list[str], list[bool]]:
    records = read_rows(path)
    return [r["question"] for r in records], [bool(r["correct"]) for r in records]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", nargs="+", help="FIRST.jsonl:SECOND.jsonl, one per test")
    parser.add_argument("--names", default="first,second", help="the two arms' names, for the table")
    parser.add_argument("--output", type=Path, required=True, help="a JSON file; a Markdown table is written beside")
    args = parser.parse_args()
    first_name, second_name = args.names.split(",")
    rows = []
    for pair in args.pairs:
        first_path, second_path = (Path(part) for part in pair.split(":"))
        first_questions, first = correctness(first_path)
        second_questions, second = correctness(second_path)
        if first_questions != second_questions:
            raise ValueError(f"{first_path} and {second_path} do not hold the same questions in the same order.")
        rows.append({"first": str(first_path), "second": str(second_path), "first_accuracy": sum(first) / len(first),
                     "second_accuracy": sum(second) / len(second), **compare(first, second)})
    args.output.write_text(json.dumps({"names": [first_name, second_name], "rows": rows}, indent=1))
    table = [f"| test | {first_name} % | {second_name} % | n | only {first_name} | only {second_name} | p |",
             "|---|---|---|---|---|---|---|"]
    table += [f"| {Path(r['first']).parent.name} | {100 * r['first_accuracy']:.1f} | "
              f"{100 * r['second_accuracy']:.1f} | {r['n']} | {r['first_only']} | {r['second_only']} | "
              f"{r['p_value']:.2g} |" for r in rows]
    args.output.with_suffix(".md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
