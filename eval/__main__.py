r"""Evaluate SmolLM-TRM models and baselines on math tasks; write per-example JSONL, results.json/.md and a plot.

    # the embedded SmolLM2-135M baseline on the shipped sample questions
    python -m eval --model embedded:smollm2 --task sample --output_dir runs/eval-sample
    # a trained TRM checkpoint against its backbone on 200 GSM8K test questions, at five recursion depths
    python -m eval --model runs/trm --model embedded:smollm2 --task gsm8k --limit 200 --batch_size 16 \
        --n_cycles 1,2,3,6,12 --output_dir runs/eval-gsm8k --write_card
    # generated multi-step arithmetic of 3-4 operations, sampled answers
    python -m eval --model runs/trm --task arith --depth 3-4 --limit 300 --do_sample --temperature 0.7 --top_p 0.9
    # MATH from a local copy, the TRM model prompted without <think> (no thoughts: an ablation)
    python -m eval --model runs/trm --task math --task_path data/MATH-500/test.jsonl --prompt_style plain

`--n_cycles` / `--n_supervision_steps` list the TRM depths to sweep (every pair runs); other models run once.
See `eval/runner.py` for what the latency and token counts measure.
"""

import argparse
import logging
from pathlib import Path

from eval.diagnostics import ABLATIONS
from eval.runner import EMBEDDED_MODELS, EMBEDDED_PREFIX, PROMPT_STYLES
from eval.tasks import TASK_KINDS
from modeling_smollm_trm import COMPILE_MODES

logger = logging.getLogger("eval")


def positive_int_list(text: str) -> list[int]:
    """`"1,2,3"` -> [1, 2, 3], every value >= 1, for the depth flags."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like '1,2,3', got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1 like '1,2,3', got {text!r}")
    return list(dict.fromkeys(values))  # a repeated depth would only rerun the same thing


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    embedded = ", ".join(EMBEDDED_PREFIX + name for name in EMBEDDED_MODELS)
    parser.add_argument("--model", action="append", required=True, help=f"A model folder, Hub id, or {embedded}; repeat for several.")
    parser.add_argument("--task", required=True, choices=list(TASK_KINDS), help="Task to evaluate on.")
    parser.add_argument("--task_path", help="gsm8k/math data: a local .json/.jsonl file or folder, or a Hub dataset name.")
    parser.add_argument("--split", default="test", help="Task split.")
    parser.add_argument("--limit", type=positive_int, help="Evaluate on the first N examples only.")
    parser.add_argument("--depth", help="arith only: operations per question, '3' or a range '1-4'.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the arith generator and of sampling.")
    parser.add_argument("--batch_size", type=positive_int, default=8, help="Prompts per generate() call.")
    parser.add_argument("--max_new_tokens", type=positive_int, default=256, help="Generation length limit.")
    parser.add_argument("--do_sample", action="store_true", help="Sample instead of greedy decoding.")
    parser.add_argument("--temperature", type=float, help="Sampling temperature (needs --do_sample; default 1.0).")
    parser.add_argument("--top_p", type=float, help="Nucleus sampling mass (needs --do_sample; default 1.0).")
    parser.add_argument("--n_cycles", type=positive_int_list, default=[], help="TRM depths T to sweep, e.g. 1,2,3,6,12.")
    parser.add_argument("--n_supervision_steps", type=positive_int_list, default=[], help="TRM N_sup values to sweep, e.g. 1,2.")
    parser.add_argument("--gguf_file", help="GGUF file to load from a --model folder without config.json.")
    parser.add_argument("--trust_remote_code", action="store_true",
                        help="Let a --model folder's own code run (a model transformers does not know). SmolLM+TRM "
                             "models never need it: they are built with this project's classes.")
    parser.add_argument("--latent_steps", type=positive_int, default=1,
                        help="`<think>` tokens a thinking prompt ends with: 1 (default) lets the model emit further "
                             "latent steps itself; N gives it N (as a curriculum's padded last stage trains).")
    parser.add_argument("--diagnostics", action="store_true",
                        help=f"Also answer with the thoughts ablated ({', '.join(ABLATIONS)}; eval/diagnostics.py): "
                             "models with thoughts, at their configured depth; reported with follows_donor.")
    parser.add_argument("--prompt_style", choices=PROMPT_STYLES,
                        help="Force `think` (end the prompt with <think>) or `plain`; default: think for models with thoughts.")
    parser.add_argument("--compile_thoughts", choices=COMPILE_MODES,
                        help="torch.compile TRM models' recursive network ('default' or a torch.compile mode): the "
                             "warm-up then runs at two batch sizes, so that no compiling lands in a timed call.")
    parser.add_argument("--output_dir", type=Path, default=Path("runs/eval"), help="Where the outputs go.")
    parser.add_argument("--write_card", action="store_true", help="Write the results into each local model folder's README.md.")
    return parser


def _check_sampling(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.do_sample and (args.temperature is not None or args.top_p is not None):
        parser.error(f"--temperature ({args.temperature}) / --top_p ({args.top_p}) only apply with --do_sample; add it or drop them")


def evaluate_from_args(args: argparse.Namespace) -> dict:
    """Load the task, run every model, write the outputs (and cards); returns the results.json content."""
    from eval.report import write_model_card, write_outputs
    from eval.runner import GenerationSettings, evaluate_models
    from eval.tasks import load_task

    task = load_task(args.task, split=args.split, limit=args.limit, path=args.task_path, seed=args.seed, depth=args.depth)
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, do_sample=args.do_sample,
        temperature=args.temperature or 1.0, top_p=args.top_p or 1.0, seed=args.seed, prompt_style=args.prompt_style,
        latent_steps=args.latent_steps,
    )
    runs = evaluate_models(args.model, task, settings, args.n_cycles, args.n_supervision_steps, args.gguf_file,
                           ABLATIONS if args.diagnostics else (), args.trust_remote_code, args.compile_thoughts)
    task_info = {"name": task.name, "kind": task.kind, "split": args.split, "path": args.task_path, "limit": args.limit,
                 "seed": args.seed if task.name == "arith" else None, "depth": args.depth, "n": len(task.examples)}
    results = write_outputs(args.output_dir, task_info, {**vars(args), "output_dir": str(args.output_dir)}, runs)
    if args.write_card:
        _write_cards(runs, task_info, write_model_card)
    return results


def _write_cards(runs: list, task_info: dict, write_model_card) -> None:
    """A card per model loaded from a local folder with a config.json; embedded and Hub models have no folder of ours."""
    by_model: dict[str, list] = {}
    for run in runs:
        by_model.setdefault(run.model.name, []).append(run)
    for name, model_runs in by_model.items():
        folder = Path(model_runs[0].model.source)
        if name.startswith(EMBEDDED_PREFIX) or not (folder / "config.json").is_file():
            logger.warning("--write_card: %s is not a local model folder; no card written for it", name)
            continue
        logger.info("wrote eval results into %s", write_model_card(folder, model_runs, task_info))


def main(argv: list[str] | None = None) -> dict:
    parser = make_parser()
    args = parser.parse_args(argv)
    _check_sampling(parser, args)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("eval").setLevel(logging.INFO)  # ours only: libraries stay at their warning level
    try:
        results = evaluate_from_args(args)
    except (ValueError, FileNotFoundError) as error:  # user errors: bad task data, missing model, ...
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    print((args.output_dir / "results.md").read_text())
    return results


if __name__ == "__main__":
    main()
