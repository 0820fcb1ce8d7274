"""Choose a trained depth-task model's inference settings on validation problems, never on its test set: the arith
test split generated with another seed, less every question of the test set (the first `--test_size` problems of
`--test_seed` at each depth, as `python -m experiments depth` tests them). Each (thoughts, prior gain, N_sup) setting
answers the same problems; the table says which setting to test with.

    python -m experiments.inference_sweep MODEL_DIR --depths 2,4 --prior_gains 1,1.5,2 --n_supervision_steps 5,8 \
        --thoughts soft,snapped,snap_thoughts --output experiments/results/.../inference_sweep.json

`--prior_gains` sets `thought_prior_gain` (models with `thought_next_token_prior`); `--n_supervision_steps` runs at
the trained n_cycles; `--thoughts snapped` answers with each thought the answer reads replaced by the token it decodes
to (eval.diagnostics' `snapped`), `snap_thoughts` with the model's `snap_thoughts` (every supervision step's thoughts
are tokens, the feedback passes' too), `soft` with the thoughts as they are.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
from pathlib import Path

from experiments.run import PROMPT_STYLE

THOUGHT_KINDS = ("soft", "snapped", "snap_thoughts")


def validation_problems(depth: int, size: int, seed: int, test_seed: int, test_size: int) -> list[dict]:
    """`size` held-out problems of `depth` from `seed`, none of them among the test set's first `test_size`."""
    from experiments.run import arith_test_size
    from smollm_trm import arith

    tested = {p["question"] for p in arith.make_arith(arith_test_size(depth, test_seed, test_size), depth, test_seed,
                                                      "test")}
    pool = arith.make_arith(arith_test_size(depth, seed, size + len(tested)), depth, seed, "test")
    problems = [p for p in pool if p["question"] not in tested][:size]
    if len(problems) < size:
        raise ValueError(f"depth {depth} has only {len(problems)} validation problems outside the test set; ask for "
                         f"fewer (--size) or test a deeper depth.")
    return problems


def parse_list(text: str, kind=float) -> list:
    return [kind(item.strip()) for item in text.split(",") if item.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a trained SmolLMTRM folder")
    parser.add_argument("--depths", default="2,4")
    parser.add_argument("--prior_gains", default="1")
    parser.add_argument("--n_supervision_steps", default="", help="empty: the trained value")
    parser.add_argument("--thoughts", default="soft", help=f"any of {', '.join(THOUGHT_KINDS)}")
    parser.add_argument("--size", type=int, default=100, help="validation problems per depth")
    parser.add_argument("--seed", type=int, default=1, help="generator seed of the validation problems")
    parser.add_argument("--test_seed", type=int, default=0)
    parser.add_argument("--test_size", type=int, default=300)
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--output", type=Path, required=True, help="a JSON file; a Markdown table is written beside")
    args = parser.parse_args()
    kinds = parse_list(args.thoughts, str)
    if not kinds or set(kinds) - set(THOUGHT_KINDS):
        parser.error(f"--thoughts lists any of {', '.join(THOUGHT_KINDS)}, got {args.thoughts!r}.")

    from eval.diagnostics import replacement, thoughts_through
    from eval.runner import GenerationSettings, depths_for, load_model, run_model
    from eval.tasks import TASK_KINDS, Task

    loaded = load_model(args.model)
    if loaded.kind != "trm":
        parser.error(f"{args.model} has no TRM thoughts (kind {loaded.kind!r}): nothing to sweep.")
    gains = parse_list(args.prior_gains)
    if gains != [1.0] and not loaded.config.thought_next_token_prior:
        parser.error(f"--prior_gains {args.prior_gains}: {args.model} has no next-token prior for a gain to weigh.")
    generation = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=0,
                                    prompt_style=PROMPT_STYLE)
    grid = depths_for(loaded, [], parse_list(args.n_supervision_steps, int))
    rows = []
    for depth in parse_list(args.depths, int):
        examples = validation_problems(depth, args.size, args.seed, args.test_seed, args.test_size)
        task = Task(name="arith", kind=TASK_KINDS["arith"], examples=examples)
        for kind, gain, inference in itertools.product(kinds, gains, grid):
            loaded.model.config.thought_prior_gain = gain
            loaded.model.config.snap_thoughts = kind == "snap_thoughts"
            thoughts = contextlib.nullcontext() if kind != "snapped" else thoughts_through(
                loaded.model, replacement(loaded.model, "snapped", None))
            with thoughts:
                metrics = run_model(loaded, task, generation, inference).metrics
            rows.append({"depth": depth, "thoughts": kind, "thought_prior_gain": gain,
                         "n_supervision_steps": inference.n_supervision_steps, **metrics})
            print(json.dumps(rows[-1]), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"model": args.model, "settings": vars(args) | {"output": str(args.output)},
                                       "rows": rows}, indent=1))
    table = ["| depth | thoughts | thought_prior_gain | N_sup | accuracy % | 95% CI |", "|---|---|---|---|---|---|"]
    table += [f"| {r['depth']} | {r['thoughts']} | {r['thought_prior_gain']} | {r['n_supervision_steps']} | "
              f"{100 * r['accuracy']:.1f} | {100 * r['ci_low']:.1f}-{100 * r['ci_high']:.1f} |" for r in rows]
    args.output.with_suffix(".md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
