"""Run one experiment: build the data and backbone of each seed, train every arm with train_sft.py, evaluate it with
eval's in-process API, and hand the collected results to `experiments.report`.

Layout of `output_dir` (a rerun keeps what is finished: a model folder with its card, an eval with results.json):

    train_config.yaml                         the train_sft.py settings every arm ran with
    data/seed<S>/train.jsonl                  arith: generated per seed (data/seed<S>-named/: arms whose steps name
                                              their instruction; data/seed<S>-partial/: arms trained on partial
                                              questions too); gsm8k: data/gsm8k/train.jsonl, shared
    backbones/seed<S>/                        from-scratch SmolLM3 + SmolLM2 tokenizer (one init per seed)
    models/<arm>/seed<S>/final/               the trained SmolLM+TRM folder (checkpoints beside it)
    evals/<arm>/seed<S>/<test>/results.json   eval's outputs; <test> is depth<D> (arith) or test (gsm8k)
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from experiments.settings import TASKS, Arm, ExperimentSettings
from smollm_trm import arith, gsm8k
from smollm_trm.checkpoints import write_atomically
from smollm_trm.export import finished_model
from smollm_trm.model_sources import embedded_smollm2
from smollm_trm.rows import read_rows, write_jsonl

logger = logging.getLogger(__name__)

PROMPT_STYLE = "think"  # every arm is prompted as it was trained, ending with <think>; see the package docstring
# Below this, before a deadline, a training is not started: loading and preparing the data alone take about a minute
# at the depth task's size, and the run would stop before its first checkpoint.
MIN_TRAINING_S = 60
# What a training takes beyond its --time_limit_s, kept from the time left before a deadline: its Python imports,
# before its clock starts, and the step under way and the checkpoint when the limit comes.
STOP_MARGIN_S = 30


# ------------------------------------------------------------------------------------------------------ backbone


@functools.cache
def backbone_tokenizer(saved: str | None):
    """The tokenizer of a from-scratch backbone: a saved folder, or the SmolLM2-135M-Instruct tokenizer read from
    the embedded GGUF (the package is found, never imported)."""
    from transformers import AutoTokenizer

    if saved is not None:
        return AutoTokenizer.from_pretrained(saved)
    folder, gguf_file = embedded_smollm2()
    return AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)


def build_backbone(shape: dict[str, Any], folder: Path, seed: int, tokenizer_folder: str | None = None) -> Path:
    """A plain backbone folder: `SmolLM3ForCausalLM` with random weights (seeded) and the SmolLM2 tokenizer."""
    import torch
    from transformers import SmolLM3Config, SmolLM3ForCausalLM

    if (folder / "config.json").is_file():
        return folder
    tokenizer = backbone_tokenizer(tokenizer_folder)
    special = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
               "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    clash = sorted(set(shape) & set(special))
    if clash:
        raise ValueError(f"backbone settings {clash} come from the tokenizer; remove them from the config.")
    torch.manual_seed(seed)
    model = SmolLM3ForCausalLM(SmolLM3Config(**shape, **special))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    logger.info("built a from-scratch backbone (%.1fM parameters) in %s", model.num_parameters() / 1e6, folder)
    return folder


# ---------------------------------------------------------------------------------------------------------- data


def arith_train_data(settings: ExperimentSettings, folder: Path, seed: int, steps: str, questions: str) -> Path:
    """`train.jsonl` of generated problems (qa rows with written reasoning in the style `steps`, dropped by
    `--reasoning latent`; questions of the form `questions`, `arith.QUESTION_FORMS`)."""
    if not (folder / "train.jsonl").is_file():
        write_jsonl(folder / "train.jsonl", arith.make_arith(settings.train_size or arith.DEFAULT_SIZE,
                                                             settings.train_depth, seed, "train", steps, questions))
    return folder


def gsm8k_train_data(settings: ExperimentSettings, folder: Path) -> Path:
    """`train.jsonl` with the first `train_size` GSM8K train rows, and no test split: the eval loss comes from a
    held-out share of train (`eval_fraction`), so GSM8K test is only ever seen by the final evaluation."""
    if not (folder / "train.jsonl").is_file():
        write_jsonl(folder / "train.jsonl", read_rows(gsm8k.LOCAL_DIR / "train.jsonl")[: settings.train_size])
    return folder


def arith_test_size(depth: int, seed: int, wanted: int) -> int:
    """The largest n <= wanted for which make_arith finds n distinct held-out problems of this depth (depth 1 has
    only a few hundred); n problems are a prefix of n + 1, so every arm and seed sees the same ones."""
    low, high = 1, wanted
    while low < high:  # binary search on "make_arith(n) succeeds", which holds for every n up to the limit
        middle = (low + high + 1) // 2
        try:
            arith.make_arith(middle, depth, seed, "test")
            low = middle
        except ValueError:
            high = middle - 1
    return low


# --------------------------------------------------------------------------------------------------------- train


def train_arm(arm: Arm, seed: int, run_dir: Path, train_config: Path, backbone: Path | None, data: Path,
              extra_args: list[str], deadline: float | None = None) -> Path | None:
    """Train one arm with `python -m train_sft` unless its final folder is complete; returns that folder, or None when
    the training stopped unfinished (at the Unix time `deadline`; a rerun resumes it). Its output goes to this
    process's (a --jobs worker's log)."""
    final = finished_model(run_dir)
    if final is not None:
        logger.info("%s exists; not retraining %s seed %d", final, arm.name, seed)
        return final
    if deadline is not None:
        left = deadline - time.time() - STOP_MARGIN_S
        if left < MIN_TRAINING_S:
            logger.warning("%.0f s of training left before the deadline: not starting %s seed %d", left, arm.name,
                           seed)
            return None
        extra_args = [*extra_args, "--time_limit_s", f"{left:.0f}"]
    args = ["--config", str(train_config), "--dataset_name", str(data), "--output_dir", str(run_dir),
            "--seed", str(seed), "--split_seed", str(seed), "--thought_mode", arm.thought_mode,
            "--reasoning", arm.reasoning, *arm.train_flags]
    if backbone is not None:
        args += ["--model_name_or_path", str(backbone)]
    logger.info("training %s seed %d: train_sft.py %s", arm.name, seed, " ".join(args + extra_args))
    code = subprocess.run([sys.executable, "-m", "train_sft", *args, *extra_args]).returncode
    if code:
        raise RuntimeError(f"training {arm.name} seed {seed} failed (train_sft.py exit code {code}); its output is "
                           "above.")
    return finished_model(run_dir)


# ---------------------------------------------------------------------------------------------------------- eval


def test_tasks(experiment: str, settings: ExperimentSettings) -> list[tuple[str, dict[str, Any]]]:
    """(folder name, eval.tasks.load_task arguments) of every test set of the experiment."""
    if TASKS[experiment] == "gsm8k":
        return [("test", {"name": "gsm8k", "split": "test", "limit": settings.test_size})]
    wanted = settings.test_size or 500
    return [(f"depth{depth}", {"name": "arith", "split": "test", "seed": settings.test_seed, "depth": str(depth),
                               "limit": arith_test_size(depth, settings.test_seed, wanted)})
            for depth in settings.test_depths]


def arm_tests(arm: Arm, tasks: list[tuple[str, dict]], settings: ExperimentSettings) -> list[tuple[str, dict, int]]:
    """(folder name, load_task arguments, `<think>` tokens the prompt ends with) of every test of an arm: each task
    with one `<think>` (further latent steps are the model's own), and for curriculum arms again with
    each of `given_latent_steps`."""
    tests = [(name, spec, 1) for name, spec in tasks]
    if arm.reasoning == "curriculum":
        tests += [(f"{name}-given{steps}", spec, steps) for steps in settings.given_latent_steps for name, spec in tasks]
    return tests


def evaluate_arm(model_dir: Path, eval_dir: Path, tests: list[tuple[str, dict, int]], settings: ExperimentSettings,
                 seed: int, compile_thoughts: str | None = None) -> dict[str, dict]:
    """eval's results.json of every test, {folder name: content}; the model loads once, tests already evaluated are
    read back. The trm arms run at every inference n_cycles (at the trained N_sup) and every inference N_sup of
    `trm_n_supervision_steps` (at the trained n_cycles), and the diagnostics run, on the tests with one `<think>`
    in the prompt; the tests that give more latent steps run at the trained depth alone. `compile_thoughts`: the
    mode the arms trained with (`--compile_thoughts`), which their evaluation compiles with too."""
    from eval.diagnostics import ABLATIONS, applies
    from eval.report import write_outputs
    from eval.runner import GenerationSettings, depths_for, load_model, run_model, warm_up
    from eval.tasks import load_task

    done = {name: eval_dir / name / "results.json" for name, _, _ in tests}
    results = {name: json.loads(path.read_text()) for name, path in done.items() if path.is_file()}
    todo = [test for test in tests if test[0] not in results]
    if not todo:
        return results
    loaded = load_model(str(model_dir), compile_thoughts=compile_thoughts)
    n_cycles = settings.trm_n_cycles or list(range(1, 2 * loaded.config.n_cycles + 1))
    sweep = depths_for(loaded, n_cycles, [])
    sweep += [depth for depth in depths_for(loaded, [], settings.trm_n_supervision_steps) if depth not in sweep]
    for name, spec, latent_steps in todo:
        generation = GenerationSettings(max_new_tokens=settings.max_new_tokens, batch_size=settings.eval_batch_size,
                                        seed=seed, prompt_style=PROMPT_STYLE, latent_steps=latent_steps)
        task = load_task(**spec)
        warm_up(loaded, task, generation)
        trained = depths_for(loaded, [], [])[0]
        if latent_steps > 1:  # a test of the number of latent steps: at the trained depth, without ablations
            runs = [run_model(loaded, task, generation, trained)]
        else:
            runs = [run_model(loaded, task, generation, depth) for depth in sweep]
            if settings.diagnostics and loaded.has_thoughts:
                runs += [run_model(loaded, task, generation, trained, ablation) for ablation in ABLATIONS
                         if applies(loaded.model, ablation)]
        task_info = {**spec, "kind": task.kind, "path": None, "n": len(task.examples), "latent_steps": latent_steps}
        results[name] = write_outputs(eval_dir / name, task_info, {**asdict(generation), "model": str(model_dir)}, runs)
    loaded.model = None
    return results


# ----------------------------------------------------------------------------------------------------------- run


def write_train_config(train: dict[str, Any], path: Path, steps: int | None) -> Path:
    """The train section as a train_sft.py YAML file; `--steps` replaces any step or epoch count."""
    import yaml

    if steps is not None:
        train = {**{k: v for k, v in train.items() if k != "num_train_epochs"}, "max_steps": steps}
    path.parent.mkdir(parents=True, exist_ok=True)
    # Atomic: --jobs workers each write the same file while another worker's train_sft.py may be reading it.
    write_atomically(path, yaml.safe_dump(train, sort_keys=False))
    return path


def train_data(experiment: str, settings: ExperimentSettings, output_dir: Path, seed: int, steps: str,
               questions: str = "complete") -> Path:
    """The training data folder of one seed whose reasoning lines have the style `steps` and whose questions the
    form `questions` (arith), written once and shared by the arms that read it."""
    if TASKS[experiment] != "arith":
        if (steps, questions) != ("worked", "complete"):
            raise ValueError(f"step style {steps!r} and question form {questions!r} are arith's; {experiment} trains "
                             "on its own questions and reasoning.")
        return gsm8k_train_data(settings, output_dir / "data" / "gsm8k")
    name = "-".join([f"seed{seed}"] + [steps] * (steps != "worked") + [questions] * (questions != "complete"))
    return arith_train_data(settings, output_dir / "data" / name, seed, steps, questions)


def seed_backbone(settings: ExperimentSettings, output_dir: Path, seed: int) -> Path | None:
    """The from-scratch backbone folder of one seed (None: the embedded SmolLM2), built once and shared by its arms."""
    if settings.backbone is None:
        return None
    return build_backbone(settings.backbone, output_dir / "backbones" / f"seed{seed}", seed, settings.tokenizer)


def trained_model(output_dir: Path, arm: str, seed: int) -> Path:
    """The final model of (arm, seed) in another run's `output_dir`, which a continued run starts from."""
    final = finished_model(output_dir / "models" / arm / f"seed{seed}")
    if final is None:
        raise ValueError(f"--continue_from {output_dir}: it holds no finished model of {arm} seed {seed} (looked in "
                         f"{output_dir / 'models' / arm / f'seed{seed}'}).")
    return final


def run_experiment(experiment: str, settings: ExperimentSettings, train: dict[str, Any], arms: tuple[Arm, ...],
                   seeds: list[int], output_dir: Path, steps: int | None = None,
                   extra_args: list[str] | None = None, worker_command: list[str] | None = None,
                   jobs: int = 1, evaluate: bool = True, deadline: float | None = None,
                   continue_from: Path | None = None) -> list[dict]:
    """Train and evaluate every arm for every seed; returns one entry per (arm, seed, test set, n_cycles).

    With `jobs` > 1 the trainings go to that many worker processes at once (`worker_command` plus
    `--arms A --seeds S`, see `run_workers`); the evaluations then run here, one at a time. `evaluate=False` trains
    only and returns no entries (a worker). With a `deadline` (Unix time) every training stops by then with a
    checkpoint, and the arms left unfinished are not evaluated. With `continue_from` (another run's output_dir) each
    (arm, seed) starts from that run's final model of the same arm and seed instead of the seed's backbone."""
    train_config = write_train_config(train, output_dir / "train_config.yaml", steps)
    tasks = test_tasks(experiment, settings)
    extra_args = list(extra_args or [])
    compile_mode = flag_value(extra_args, "--compile_thoughts")  # a training flag that the evaluation follows
    runs = [(arm, seed) for seed in seeds for arm in arms]
    # Before any worker starts, so that workers read what is written here and never write it at the same time.
    data = {(seed, form): train_data(experiment, settings, output_dir, seed, *form)
            for seed, form in {(seed, arm.data_form) for arm, seed in runs}}
    backbones = {seed: seed_backbone(settings, output_dir, seed) for seed in seeds}
    if jobs > 1:
        run_workers(runs, worker_command, output_dir / "logs", jobs)
    entries = []
    for arm, seed in runs:
        backbone = backbones[seed] if continue_from is None else trained_model(continue_from, arm.name, seed)
        run_dir = output_dir / "models" / arm.name / f"seed{seed}"
        eval_dir = output_dir / "evals" / arm.name / f"seed{seed}"
        if not evaluate:
            train_arm(arm, seed, run_dir, train_config, backbone, data[seed, arm.data_form], extra_args, deadline)
            continue
        tests = arm_tests(arm, tasks, settings)
        if all((eval_dir / name / "results.json").is_file() for name, _, _ in tests):
            # Evaluated: the report needs no model (a rerun elsewhere may have only the evals, see docs/RESULTS.md).
            found = {name: json.loads((eval_dir / name / "results.json").read_text()) for name, _, _ in tests}
            trained = configured_depth(train_config, [*arm.train_flags, *extra_args])
        else:
            model_dir = train_arm(arm, seed, run_dir, train_config, backbone, data[seed, arm.data_form], extra_args,
                                  deadline)
            if model_dir is None:
                logger.warning("%s seed %d stopped unfinished (--time_limit_s): not evaluated; rerun to resume it",
                               arm.name, seed)
                continue
            config = json.loads((model_dir / "config.json").read_text())
            trained = (config["n_cycles"], config["n_supervision_steps"])
            found = evaluate_arm(model_dir, eval_dir, tests, settings, seed, compile_mode)
        for name, results in found.items():
            entries += result_entries(arm, seed, name, results, (eval_dir / name).relative_to(output_dir), trained)
    return entries


def configured_depth(train_config: Path, flags: list[str]) -> tuple[int, int]:
    """The training (n_cycles, n_supervision_steps) of an arm whose train_sft.py flags are `flags` (the arm's, then
    the command's): each the flag's value, else the train config's, else the model default."""
    import yaml

    from configuration_smollm_trm import SmolLMTRMConfig

    config = yaml.safe_load(train_config.read_text())

    def setting(name: str) -> int:
        given = flag_value(flags, f"--{name}")
        return int(given if given is not None else config.get(name, getattr(SmolLMTRMConfig(), name)))

    return setting("n_cycles"), setting("n_supervision_steps")


def flag_value(extra_args: list[str], flag: str) -> str | None:
    """The value of a train_sft flag among the extra arguments (`--flag value` or `--flag=value`), or None; the last
    one given, as argparse reads them."""
    value = None
    for index, arg in enumerate(extra_args):
        if arg == flag and index + 1 < len(extra_args):
            value = extra_args[index + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def visible_gpus() -> list[str]:
    """The GPU ids a worker may be pinned to (CUDA_VISIBLE_DEVICES order), or [] on a machine without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [part.strip() for part in listed.split(",")] if listed else [str(i) for i in range(torch.cuda.device_count())]
    return ids[: torch.cuda.device_count()]


def run_workers(runs: list[tuple[Arm, int]], command: list[str], log_dir: Path, jobs: int) -> None:
    """Run `command --arms A --seeds S` for every (arm, seed), `jobs` at a time, each pinned to the visible GPU with
    the fewest workers and given an equal share of the CPU threads; its output goes to `log_dir/<arm>-seed<S>.log`.

    Why processes: a small model leaves an H200 mostly idle (each step is bound by Python and kernel launches), so
    several trainings side by side finish sooner than one after another. A failed worker fails the experiment,
    after the others finish, naming its log."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    log_dir.mkdir(parents=True, exist_ok=True)
    gpus = visible_gpus()
    busy = {gpu: 0 for gpu in gpus}
    lock = threading.Lock()
    threads = str(max(1, (os.cpu_count() or 1) // jobs))

    def work(arm: Arm, seed: int) -> tuple[str, int, Path]:
        log = log_dir / f"{arm.name}-seed{seed}.log"
        env = {**os.environ, "OMP_NUM_THREADS": threads, "TQDM_DISABLE": "1"}
        with lock:
            gpu = min(busy, key=busy.get) if busy else None
            if gpu is not None:
                busy[gpu] += 1
                env["CUDA_VISIBLE_DEVICES"] = gpu
        try:
            with log.open("w") as stream:
                code = subprocess.run([*command, "--arms", arm.name, "--seeds", str(seed)], env=env, stdout=stream,
                                      stderr=subprocess.STDOUT).returncode
        finally:
            if gpu is not None:
                with lock:
                    busy[gpu] -= 1
        return f"{arm.name} seed {seed}", code, log

    # Runs with thoughts are the slowest: start them first so that the last ones to finish are the short ones.
    ordered = sorted(runs, key=lambda run: run[0].thought_mode == "none")
    failed = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(work, arm, seed) for arm, seed in ordered]
        for future in tqdm(futures, desc=f"runs ({jobs} at a time, GPUs {gpus or 'none'})"):
            name, code, log = future.result()
            logger.info("%s finished with exit code %d (log: %s)", name, code, log)
            if code:
                failed.append(f"{name} (exit code {code}, log: {log})")
    if failed:
        raise RuntimeError(f"{len(failed)} worker run(s) failed: {'; '.join(failed)}")


def result_entries(arm: Arm, seed: int, test_name: str, results: dict, folder: Path, trained: tuple[int, int]
                   ) -> list[dict]:
    """One flat entry per eval run: the arm, seed, test depth (arith) and inference n_cycles and N_sup (trm) with
    the metrics. `primary` marks the run at the training depth `trained` (n_cycles, N_sup) (every run of an arm
    without recursion), the one compared across arms; the others are the trm arm's inference-depth sweeps."""
    task = results["task"]
    given = task.get("latent_steps", 1)
    entries = []
    for run in results["runs"]:
        depth = run["depth"]
        entries.append({
            # an arm given its latent steps in the prompt is reported as its own row
            "arm": arm.name if given == 1 else f"{arm.name}@{given}", "latent_steps": given,
            "thought_mode": arm.thought_mode, "reasoning": arm.reasoning, "seed": seed,
            "test": test_name, "test_depth": int(task["depth"]) if task.get("depth") else None,
            "n_cycles": depth["n_cycles"] if depth else None,
            "n_supervision_steps": depth["n_supervision_steps"] if depth else None,
            "ablation": run.get("ablation"), "follows_donor": run.get("follows_donor"),
            "primary": run.get("ablation") is None and (
                depth is None or (depth["n_cycles"], depth["n_supervision_steps"]) == tuple(trained)),
            **{key: run[key] for key in ("n", "accuracy", "ci_low", "ci_high", "mean_tokens_generated",
                                         "mean_latency_s")},
            "eval_dir": str(folder),  # relative to the output_dir
            "predictions": str(folder / run["predictions_file"]),  # per question: what the paired tests read
        })
    return entries


__all__ = ["build_backbone", "run_experiment"]
