"""What the thoughts say, read from an evaluation of the depth task: each latent step's nearest tokens (eval's
`thoughts` field) against the written step it stands for, split into what a step copies (`12*3=`: the last value,
the question's operator and operand) and the result it computes (`36`), and whether the answer is the result that
the last step's thoughts decode.

    python -m experiments.thought_reading EVAL_DIR [EVAL_DIR ...] --tokenizer FOLDER [--output reading.json] \
        [--steps named]

An EVAL_DIR is one test's folder of `python -m eval` (its results.json names the arith test set, regenerated here
to get each problem's worked lines, in the style the model was trained on: `--steps`); every JSONL in it without an
ablation is read. A step is scored against the written line the curriculum's probe trained it on, thought i against
the line's token i. A second table reads every problem, also one that took fewer latent steps than it has written
steps (beyond the trained depth): how many it took, and which of the question's instructions each step carries out.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from smollm_trm.arith import OPERATIONS, STEP_STYLES, instructions

EQUALS = "="
# A step's worked line `a op b=`, after the instruction that a named step repeats first ("Add 5. 7+5=")
WORKED = re.compile(rf"(?:(?:{'|'.join(OPERATIONS)}) \d+\.\s*)?\d+([-+*/])(\d+)=")


def result_start(line_pieces: list[str]) -> int:
    """Where a written step's result begins: after its `=` (a line without one is all copied)."""
    return line_pieces.index(EQUALS) + 1 if EQUALS in line_pieces else len(line_pieces)


def step_reading(tokens: list[str], line_pieces: list[str]) -> dict[str, float | bool]:
    """One latent step: the share of its copied tokens (up to `=`) and of its result tokens that the thoughts decode,
    and whether the whole result is right."""
    split = result_start(line_pieces)
    right = [decoded == piece for decoded, piece in zip(tokens, line_pieces)]
    right += [False] * (len(line_pieces) - len(right))
    copied, result = right[:split], right[split:]
    return {"copied": sum(copied) / max(1, len(copied)), "result": sum(result) / max(1, len(result)),
            "result_right": bool(result) and all(result), "step_right": all(right)}


def instruction_read(tokens: list[str], asked: list[tuple[str, int]]) -> str:
    """Which of the question's instructions (`smollm_trm.arith.instructions`) a latent step carries out, by the sign
    and operand its thoughts decode to: "1", "2", ... (1-based), "ambiguous" (several have them), "none", or
    "unparsed" (no `a op b=` to read)."""
    match = WORKED.match("".join(tokens))
    if match is None:
        return "unparsed"
    hits = [str(i) for i, (sign, operand) in enumerate(asked, start=1) if (sign, operand) == (match[1], int(match[2]))]
    return hits[0] if len(hits) == 1 else ("ambiguous" if hits else "none")


def record_reading(record: dict, lines: list[str], pieces_of) -> dict | None:
    """A problem's reading: each real step's, and whether the answer equals what the last real step's thoughts
    give as its result (None where the record holds fewer latent steps than the problem has lines)."""
    thoughts = record.get("thoughts") or []
    if len(thoughts) < len(lines):
        return None
    asked = instructions(record["question"])
    steps = [{**step_reading(think["tokens"], pieces_of(line)), "instruction": instruction_read(think["tokens"], asked)}
             for think, line in zip(thoughts, lines)]
    last_pieces = pieces_of(lines[-1])
    decoded_result = "".join(thoughts[len(lines) - 1]["tokens"][result_start(last_pieces):len(last_pieces)]).strip()
    return {"steps": steps, "correct": record["correct"], "decoded_result": decoded_result,
            "answer_is_decoded_result": bool(decoded_result) and record["extracted"] == decoded_result}


def summarize(readings: list[dict]) -> dict[str, float]:
    """Means over problems (and their steps) of what `record_reading` gives; `steps_right_from_start[k]`: the share
    of problems whose steps 1..k+1 are all wholly right (copied and result tokens), where errors begin."""
    steps = [step for reading in readings for step in reading["steps"]]
    last_right = [r for r in readings if r["steps"][-1]["result_right"]]
    longest = max(len(r["steps"]) for r in readings)
    leading = [next((k for k, step in enumerate(r["steps"]) if not step["step_right"]), len(r["steps"]))
               for r in readings]
    return {
        "problems": len(readings),
        "copied_token_accuracy": sum(s["copied"] for s in steps) / len(steps),
        "result_token_accuracy": sum(s["result"] for s in steps) / len(steps),
        "step_result_right": sum(s["result_right"] for s in steps) / len(steps),
        "last_result_right": len(last_right) / len(readings),
        "answer_is_decoded_result": sum(r["answer_is_decoded_result"] for r in readings) / len(readings),
        "accuracy": sum(r["correct"] for r in readings) / len(readings),
        "accuracy_when_last_result_right": (sum(r["correct"] for r in last_right) / len(last_right)
                                            if last_right else float("nan")),
        "steps_right_from_start": [sum(n > k for n in leading) / len(readings) for k in range(longest)],
        # Step k: the share of problems whose step k carries out each instruction (which one it reads).
        "instruction_read": [shares([r["steps"][k]["instruction"] for r in readings if len(r["steps"]) > k])
                             for k in range(longest)],
    }


def steps_taken(records: list[dict]) -> dict[str, object]:
    """Over every problem, also one that stopped before its last written step (beyond the trained depth): how many
    latent steps it took, and which instruction its step k carries out."""
    read = [[instruction_read(think["tokens"], instructions(record["question"])) for think in record["thoughts"]]
            for record in records]
    longest = max(map(len, read))
    return {"latent_steps": shares([str(len(steps)) for steps in read]),
            "instruction_read_every_problem": [shares([steps[k] for steps in read if len(steps) > k])
                                               for k in range(longest)]}


def shares(labels: list[str]) -> dict[str, float]:
    return {label: count / len(labels) for label, count in sorted(Counter(labels).items())}


def read_eval_dir(folder: Path, pieces_of, steps: str = "worked") -> dict[str, dict]:
    """{JSONL name: summary} of one test's folder, its problems' lines written in the style `steps`."""
    from eval.tasks import load_task
    from smollm_trm.rows import read_rows

    task = json.loads((folder / "results.json").read_text())["task"]
    if task["name"] != "arith":
        raise ValueError(f"{folder}: thought reading needs the arith task (written lines to compare), got "
                         f"{task['name']!r}.")
    spec = {key: task[key] for key in ("name", "split", "seed", "depth", "limit")}
    lines = {ex["id"]: ex["reasoning"].splitlines() for ex in load_task(**spec, steps=steps).examples}
    summaries = {}
    for path in sorted(folder.glob("*.jsonl")):
        records = read_rows(path)
        if not records or "ablation" in records[0] or "thoughts" not in records[0]:
            continue
        readings = [r for r in (record_reading(rec, lines[rec["id"]], pieces_of) for rec in records) if r]
        summaries[path.name] = {**(summarize(readings) if readings else {"problems": 0}), **steps_taken(records)}
    return summaries


def cell(value) -> str:
    if isinstance(value, list):
        return " / ".join(map(cell, value))
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(results: dict[str, dict[str, dict]]) -> str:
    columns = ["problems", "copied_token_accuracy", "result_token_accuracy", "step_result_right",
               "last_result_right", "answer_is_decoded_result", "accuracy", "accuracy_when_last_result_right",
               "steps_right_from_start"]
    rows = ["| eval | file | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 2)]
    for folder, files in results.items():
        for name, summary in files.items():
            if summary["problems"]:  # some problem took all its written steps as latent steps
                rows.append(f"| {folder} | {name} | " + " | ".join(cell(summary[c]) for c in columns) + " |")
    rows += ["", "Every problem: the latent steps it took, and the instruction step k carries out (the two most "
             "common, with their shares).", "", "| eval | file | latent steps | instruction read at step 1, 2, ... |",
             "|---|---|---|---|"]
    for folder, files in results.items():
        for name, summary in files.items():
            read = ["; ".join(f"{label} {share:.2f}" for label, share in
                              sorted(step.items(), key=lambda item: -item[1])[:2])
                    for step in summary["instruction_read_every_problem"]]
            taken = ", ".join(f"{n}: {share:.2f}" for n, share in summary["latent_steps"].items())
            rows.append(f"| {folder} | {name} | {taken} | " + " / ".join(read) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("eval_dirs", nargs="+", type=Path)
    parser.add_argument("--tokenizer", required=True, help="The models' tokenizer folder (the step probe's tokens).")
    parser.add_argument("--output", type=Path, help="Write the summaries here as JSON.")
    parser.add_argument("--steps", choices=STEP_STYLES, default="worked",
                        help="The style of the written lines the model's thoughts were trained on.")
    args = parser.parse_args(argv)
    from smollm_trm.loading import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)  # a model folder's, too

    def pieces_of(line: str) -> list[str]:
        return [tokenizer.decode([token]) for token in tokenizer(line, add_special_tokens=False)["input_ids"]]

    results = {str(folder): read_eval_dir(folder, pieces_of, args.steps) for folder in args.eval_dirs}
    print(markdown(results))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
