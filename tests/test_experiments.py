"""The experiment harness end to end at smoke size (tiny from-scratch backbones, a few steps, CPU): every arm
trains and evaluates, and the outputs exist and are well-formed (the accuracies of a 3-step run mean nothing)."""

import json
import logging
import math
import re
from pathlib import Path

import pytest
import torch

from experiments.__main__ import main
from experiments.run import flag_value
from experiments.settings import ARMS, CONFIG_DIR, load_config, select_arms


def check_outputs(folder, experiment: str, plots: set[str]) -> dict:
    results = json.loads((folder / "results.json").read_text())
    assert results["experiment"] == experiment and results["seeds"] == [0]
    assert results["arms"] == [arm.name for arm in ARMS[experiment]]
    assert set(results["plots"]) == plots
    for plot in plots:
        assert (folder / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
    for entry in results["results"]:
        assert 0.0 <= entry["ci_low"] <= entry["accuracy"] <= entry["ci_high"] <= 1.0, entry
        assert entry["n"] >= 1 and entry["mean_tokens_generated"] >= 1 and entry["mean_latency_s"] > 0, entry
        assert (entry["n_cycles"] is None) == (entry["thought_mode"] != "trm"), entry
    for row in results["summary"]:
        assert all(math.isfinite(row[key]) for key in row if key.endswith(("_mean", "_std"))), row
    table = (folder / "results.md").read_text()
    assert all(f"| {arm} |" in table for arm in results["arms"]), table
    return results


@pytest.mark.slow
def test_depth_smoke(tmp_path):
    main(["depth", "--smoke", "--output_dir", str(tmp_path)])
    results = check_outputs(tmp_path, "depth", {"accuracy_vs_depth.png", "trm_n_cycles.png"})
    # every arm at every test depth 1..6, the trm arms at inference n_cycles 1 and 2 (twice the trained 1) at their
    # trained N_sup, and at N_sup 2 (trm_n_supervision_steps) at the trained n_cycles; the curriculum arms also given
    # the padded last stage's 2 latent steps (as arm "<name>@2"), at the trained depth
    cells = {(e["arm"], e["test_depth"], e["n_cycles"], e["n_supervision_steps"]) for e in results["results"]}

    def trained(arm, flag):  # an arm's flags override the smoke config's 1; the last one given counts
        return int(flag_value(list(arm.train_flags), flag) or 1)

    def depth(arm):
        return trained(arm, "--n_cycles"), trained(arm, "--n_supervision_steps")

    trm = [arm for arm in ARMS["depth"] if arm.thought_mode == "trm"]
    expected = {(arm.name, d, None, None) for arm in ARMS["depth"] if arm.thought_mode != "trm" for d in range(1, 7)}
    # n_cycles 1 to twice the trained value at the trained N_sup, and N_sup 2 at the trained n_cycles
    expected |= {(arm.name, d, t, depth(arm)[1]) for arm in trm for d in range(1, 7)
                 for t in range(1, 2 * depth(arm)[0] + 1)}
    expected |= {(arm.name, d, depth(arm)[0], 2) for arm in trm for d in range(1, 7)}
    expected |= {(f"{arm.name}@2", d, *(depth(arm) if arm.thought_mode == "trm" else (None, None)))
                 for arm in ARMS["depth"] for d in range(1, 7) if arm.reasoning == "curriculum"}
    assert cells == expected
    primary = {e["arm"]: (e["n_cycles"], e["n_supervision_steps"]) for e in results["results"] if e["primary"]}
    assert all(primary[arm.name] == depth(arm) for arm in trm)
    assert "at inference supervision steps n_supervision_steps" in (tmp_path / "results.md").read_text()
    given = json.loads((tmp_path / "evals/trm_curriculum/seed0/depth3-given2/final__T1_N1.jsonl").read_text()
                       .splitlines()[0])["prompt"]
    assert given.endswith("<think><think>") and not given.endswith("<think><think><think>")
    prompt = json.loads((tmp_path / "evals/none/seed0/depth1/final.jsonl").read_text().splitlines()[0])["prompt"]
    assert prompt.endswith("<think>"), "every arm is prompted as trained, ending with <think>"
    assert "| depth 6 |" in (tmp_path / "results.md").read_text()
    # paired tests for the configured pairs that ran (the one naming an absent arm is skipped), depth by depth
    paired = {(c["first"], c["second"], c["test_depth"]): c for c in results["paired"]}
    assert set(paired) == {(a, b, d) for a, b in (("trm", "pause"), ("trm_probe", "pause_probe")) for d in range(1, 7)}
    for (first, second, depth), c in paired.items():
        records = {arm: [json.loads(line) for line in (tmp_path / f"evals/{arm}/seed0/depth{depth}/"
                                                                   f"{'final__T1_N1' if arm.startswith('trm') else 'final'}.jsonl"
                                                                   ).read_text().splitlines()]
                   for arm in (first, second)}
        wins = sum(a["correct"] and not b["correct"] for a, b in zip(records[first], records[second]))
        assert (c["n"], c["first_only"]) == (len(records[first]), wins) and 0 <= c["p_value"] <= 1
    assert "McNemar" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_a_run_continues_from_another_runs_final_models(tmp_path, capfd, caplog):
    """`--continue_from`: each (arm, seed) trains on from the other run's final model of that arm and seed, here
    its last stage only (`--curriculum_first_stage`, passed through to train_sft.py); an (arm, seed) that the other
    run did not finish is refused before anything trains."""
    first, second = tmp_path / "first", tmp_path / "second"
    main(["depth", "--smoke", "--arms", "trm_jacobi_own", "--output_dir", str(first), "--train_only"])
    capfd.readouterr()
    with pytest.raises(SystemExit):
        main(["depth", "--smoke", "--arms", "trm_jacobi_own", "--seeds", "0,1", "--output_dir", str(second),
              "--continue_from", str(first), "--train_only"])
    assert "holds no finished model of trm_jacobi_own seed 1" in capfd.readouterr().err
    assert not (second / "models").exists()
    caplog.set_level(logging.INFO, logger="experiments.run")
    main(["depth", "--smoke", "--arms", "trm_jacobi_own", "--output_dir", str(second), "--continue_from", str(first),
          "--train_only", "--steps", "2", "--curriculum_first_stage", "2"])
    output = capfd.readouterr()
    started = str(first / "models" / "trm_jacobi_own" / "seed0" / "final")
    assert f"--model_name_or_path {started}" in caplog.text
    stages = re.findall(r"'curriculum_stage': '([\d.]+)'", output.out + output.err)
    assert stages and set(stages) == {"2"}
    assert (second / "models" / "trm_jacobi_own" / "seed0" / "final" / "README.md").is_file()


def test_gsm8k_smoke(tmp_path):
    main(["gsm8k", "--smoke", "--output_dir", str(tmp_path)])
    results = check_outputs(tmp_path, "gsm8k", {"accuracy_vs_time.png", "trm_n_cycles.png"})
    assert {e["arm"] for e in results["results"]} == {"answer", "pause", "trm", "cot"}
    rows = [json.loads(line) for line in (tmp_path / "data/gsm8k/train.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all("####" in row["answer"] for row in rows)


def test_configs_load_and_arms_differ_only_in_thoughts():
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        settings, train = load_config(path)
        assert "thought_mode" not in train and "reasoning" not in train, f"{path.name}: set per arm, not shared"
    for experiment, arms in ARMS.items():
        assert len({(arm.thought_mode, arm.reasoning, arm.train_flags, arm.data_form) for arm in arms}) == len(arms), \
            experiment
    assert {arm.data_form for arm in ARMS["gsm8k"]} == {("worked", "complete")}, "step styles, question forms: arith's"


def test_arms_with_named_steps_train_on_their_own_copy_of_the_seeds_problems(tmp_path):
    """Each step style gets its own training file of one seed: the same problems, the lines in that style."""
    from experiments.run import train_data

    settings, _ = load_config(CONFIG_DIR / "depth_smoke.yaml")
    worked, named = (train_data("depth", settings, tmp_path, 0, style) for style in ("worked", "named"))
    assert (worked, named) == (tmp_path / "data" / "seed0", tmp_path / "data" / "seed0-named")
    rows = {style: [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
            for style, folder in (("worked", worked), ("named", named))}
    assert [r["question"] for r in rows["worked"]] == [r["question"] for r in rows["named"]]
    assert rows["named"][0]["reasoning"].split("\n")[0].endswith(rows["worked"][0]["reasoning"].split("\n")[0])
    assert rows["named"][0]["reasoning"] != rows["worked"][0]["reasoning"]
    with pytest.raises(ValueError, match="arith's"):
        train_data("gsm8k", settings, tmp_path, 0, "named")


def test_arms_with_partial_questions_train_on_their_own_file_of_the_seeds_problems(tmp_path):
    """The partial question form gets its own training file of one seed: the complete file's generator with some
    questions asking for an earlier result; the arms that declare it read it."""
    from experiments.run import train_data

    settings, _ = load_config(CONFIG_DIR / "depth_smoke.yaml")
    complete, partial = (train_data("depth", settings, tmp_path, 0, "worked", form) for form in ("complete", "partial"))
    assert (complete, partial) == (tmp_path / "data" / "seed0", tmp_path / "data" / "seed0-partial")
    assert train_data("depth", settings, tmp_path, 0, "named", "partial") == tmp_path / "data" / "seed0-named-partial"
    questions = {form: [json.loads(line)["question"] for line in (folder / "train.jsonl").read_text().splitlines()]
                 for form, folder in (("complete", complete), ("partial", partial))}
    assert all(q.endswith("What is the result?") for q in questions["complete"])
    assert any("after the first" in q for q in questions["partial"])
    assert {arm.name for arm in ARMS["depth"] if arm.questions == "partial"} == {
        "cot_partial", "trm_jacobi_own_snap_decay_partial", "pause_forced_lm_own_snap_decay_partial",
        "trm_jacobi_own_snap_decay_cycles_partial"}
    with pytest.raises(ValueError, match="arith's"):
        train_data("gsm8k", settings, tmp_path, 0, "worked", "partial")


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: {test_sise: 3}\ntrain: {}\n")
    with pytest.raises(ValueError, match="test_sise"):
        load_config(bad)
    bad.write_text("train: {}\n")
    with pytest.raises(ValueError, match="experiment"):
        load_config(bad)
    with pytest.raises(ValueError, match="deep"):
        select_arms("depth", ["deep"])


@pytest.mark.slow
def test_jobs_run_each_arm_in_a_worker_process_with_the_in_process_result(tmp_path):
    """--jobs 2 trains and evaluates in subprocesses (one log each) and reports the same weights and accuracies as
    the in-process run of the same arms and seed."""
    from safetensors.torch import load_file

    runs = {}
    for name, jobs in (("workers", "2"), ("in_process", "1")):
        runs[name] = main(["depth", "--smoke", "--arms", "none,trm", "--jobs", jobs,
                           "--output_dir", str(tmp_path / name)])
    assert sorted(p.name for p in (tmp_path / "workers" / "logs").iterdir()) == ["none-seed0.log", "trm-seed0.log"]
    assert not (tmp_path / "in_process" / "logs").exists()
    for arm in ("none", "trm"):
        weights = [load_file(tmp_path / name / "models" / arm / "seed0" / "final" / "model.safetensors")
                   for name in runs]
        assert weights[0].keys() == weights[1].keys()
        for key in weights[0]:
            torch.testing.assert_close(weights[0][key], weights[1][key], atol=1e-5, rtol=1e-5)
    accuracies = [[(e["arm"], e["test"], e["n_cycles"], e["accuracy"]) for e in run["results"]]
                  for run in runs.values()]
    assert accuracies[0] == accuracies[1]


def test_a_deadline_gives_each_training_the_time_left_and_starts_none_without_it(tmp_path, monkeypatch):
    import subprocess
    import time

    from experiments import run

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda command: calls.append(command) or subprocess.CompletedProcess(command, 0))
    arm = select_arms("depth", ["trm"])[0]
    args = (arm, 0, tmp_path / "run", tmp_path / "train.yaml", None, tmp_path / "data", ["--max_steps", "3"])
    assert run.train_arm(*args, deadline=time.time() + 300) is None  # the stub trains nothing: unfinished
    limit = calls[-1][calls[-1].index("--time_limit_s") + 1]
    assert 290 - run.STOP_MARGIN_S <= float(limit) <= 300 - run.STOP_MARGIN_S
    assert calls[-1][-4:-2] == ["--max_steps", "3"]
    assert run.train_arm(*args, deadline=time.time() + run.MIN_TRAINING_S + run.STOP_MARGIN_S - 5) is None
    assert len(calls) == 1, "a training with less than a minute left must not start"
    run.train_arm(*args)
    assert "--time_limit_s" not in calls[-1]


def test_compile_thoughts_given_for_training_compiles_the_evaluation_too(tmp_path, monkeypatch):
    """A `--compile_thoughts` meant for train_sft reaches every arm's training and its evaluation's model."""
    from experiments import run

    trained, evaluated = [], []
    monkeypatch.setattr(run, "train_arm", lambda *args, **kwargs: trained.append(args[6]) or tmp_path)
    monkeypatch.setattr(run, "evaluate_arm", lambda *args: evaluated.append(args[5]) or {})
    (tmp_path / "config.json").write_text('{"n_cycles": 1, "n_supervision_steps": 1}')
    main(["depth", "--smoke", "--arms", "trm", "--output_dir", str(tmp_path / "out"), "--compile_thoughts=default"])
    assert trained == [["--compile_thoughts=default"]] and evaluated == ["default"]
    assert run.flag_value(["--n_cycles", "3", "--compile_thoughts", "reduce-overhead"], "--compile_thoughts") == (
        "reduce-overhead")
    assert run.flag_value(["--n_cycles", "3"], "--compile_thoughts") is None


def test_training_curves_join_the_logs_of_resumed_calls(tmp_path):
    from experiments.training_curves import joined_runs, markdown

    def log(folder, lines):
        folder.mkdir()
        (folder / "trm-seed0.log").write_text("INFO starting\n" + "\n".join(lines) + "\n")
        return folder

    first = log(tmp_path / "call1", ["{'loss': '2.0', 'probe_accuracy': '0.2', 'epoch': '0.25'}",
                                     "{'eval_loss': '3.0', 'epoch': '0.25'}",
                                     "{'loss': '1.0', 'probe_accuracy': '0.4', 'epoch': '0.5'}"])
    # resumed from the checkpoint at step 1 of 4: its step 2 replaces the first call's
    second = log(tmp_path / "call2", ["{'loss': '0.9', 'probe_accuracy': '0.5', 'epoch': '0.5'}",
                                      "{'loss': '0.5', 'probe_accuracy': '0.7', 'epoch': '0.75'}"])
    runs = joined_runs([first, second], "probe_accuracy", max_steps=4)
    assert runs == {"trm-seed0": {1: 0.2, 2: 0.5, 3: 0.7}}
    assert markdown(runs, "probe_accuracy", every=1).splitlines()[-1] == "| trm-seed0 | 0.200 | 0.500 | 0.700 |"


def test_a_failed_worker_fails_the_experiment_and_names_its_log(tmp_path):
    with pytest.raises(RuntimeError, match=r"none seed 0 \(exit code 1, log: .*none-seed0.log\)"):
        # an unknown train_sft.py flag: the worker's train_sft parser refuses it
        main(["depth", "--smoke", "--arms", "none", "--jobs", "2", "--output_dir", str(tmp_path),
              "--no_such_flag", "1"])
    assert "--no_such_flag" in (tmp_path / "logs" / "none-seed0.log").read_text()


def test_thought_reading_splits_copied_tokens_from_computed_results(tmp_path):
    from eval.tasks import load_task
    from experiments.thought_reading import markdown, read_eval_dir, record_reading, step_reading
    from smollm_trm.arith import make_arith

    def pieces_of(line):  # one token per character
        return list(line)

    assert step_reading(list("12*3=36"), pieces_of("12*3=36")) == {"copied": 1.0, "result": 1.0,
                                                                    "result_right": True, "step_right": True}
    assert step_reading(list("12*3=35"), pieces_of("12*3=36")) == {"copied": 1.0, "result": 0.5,
                                                                    "result_right": False, "step_right": False}
    assert step_reading(list("12*4=36"), pieces_of("12*3=36"))["step_right"] is False  # a wrong copy, a right result
    assert step_reading(list("1"), pieces_of("12*3=36"))["copied"] == 0.2  # fewer thoughts than tokens
    spec = {"name": "arith", "split": "test", "seed": 0, "depth": "2", "limit": 2}
    examples = load_task(**spec).examples
    (tmp_path / "results.json").write_text(json.dumps({"task": {**spec, "kind": "number"}}))
    records = []
    for ex, wrong_result in zip(examples, (False, True)):
        lines = ex["reasoning"].splitlines()
        thoughts = [{"tokens": list(line)} for line in lines]
        if wrong_result:
            thoughts[-1]["tokens"][-1] = "x"
        records.append({"id": ex["id"], "question": ex["question"], "extracted": ex["answer"], "correct": True,
                        "thoughts": thoughts + [{"tokens": ["pad"]}]})  # a padding <think> after the real steps
    (tmp_path / "final.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    (tmp_path / "final__zeroed.jsonl").write_text(json.dumps({**records[0], "ablation": "zeroed"}))
    summary = read_eval_dir(tmp_path, pieces_of)
    assert list(summary) == ["final.jsonl"]
    got = summary["final.jsonl"]
    assert got["problems"] == 2 and got["copied_token_accuracy"] == 1.0
    assert got["last_result_right"] == 0.5 and got["answer_is_decoded_result"] == 0.5
    assert got["accuracy_when_last_result_right"] == 1.0
    assert got["steps_right_from_start"] == [1.0, 0.5]  # the second problem's last step is wrong
    assert got["instruction_read"] == [{"1": 1.0}, {"2": 1.0}]  # each step carries out its own instruction
    from experiments.thought_reading import instruction_read

    asked = [("+", 5), ("*", 3), ("+", 5)]
    assert [instruction_read(list(text), asked) for text in ("7*3=21", "2+5=7", "1-4=", "12")] == [
        "2", "ambiguous", "none", "unparsed"]
    assert record_reading({**records[0], "thoughts": records[0]["thoughts"][:1]},
                          examples[0]["reasoning"].splitlines(), pieces_of) is None  # fewer steps than lines
    assert got["latent_steps"] == {"3": 1.0}  # every problem, with its padding step
    assert got["instruction_read_every_problem"] == [{"1": 1.0}, {"2": 1.0}, {"unparsed": 1.0}]
    # problems that stopped after their first step (as beyond the trained depth) are read by the second table only
    (tmp_path / "final.jsonl").write_text("\n".join(json.dumps({**r, "thoughts": r["thoughts"][:1]}) for r in records))
    got = read_eval_dir(tmp_path, pieces_of)["final.jsonl"]
    assert got["problems"] == 0 and got["latent_steps"] == {"1": 1.0}
    assert got["instruction_read_every_problem"] == [{"1": 1.0}]
    assert "| 1: 1.00 | 1 1.00 |" in markdown({"dir": {"final.jsonl": got}})
    # a model trained on named steps ("Add 5. 7+5=12") is read against lines of that style
    named = make_arith(2, 2, 0, "test", steps="named")
    (tmp_path / "final.jsonl").write_text("\n".join(json.dumps(
        {**record, "thoughts": [{"tokens": list(line)} for line in example["reasoning"].splitlines()]})
        for record, example in zip(records, named)))
    assert read_eval_dir(tmp_path, pieces_of)["final.jsonl"]["copied_token_accuracy"] < 0.5  # read as worked lines
    got = read_eval_dir(tmp_path, pieces_of, "named")["final.jsonl"]
    assert got["copied_token_accuracy"] == 1.0 and got["steps_right_from_start"] == [1.0, 1.0]
    assert got["instruction_read"] == [{"1": 1.0}, {"2": 1.0}]


def test_mcnemar_matches_the_exact_binomial_test():
    from eval.paired import compare, mcnemar_p_value

    assert mcnemar_p_value(21, 9) == pytest.approx(0.0427739452570677)  # scipy.stats.binomtest(9, 30).pvalue
    assert mcnemar_p_value(2, 0) == 0.5 and mcnemar_p_value(0, 0) == 1.0 and mcnemar_p_value(5, 5) == 1.0
    result = compare([True, True, False, True], [True, False, False, False])
    assert result == {"n": 4, "first_only": 2, "second_only": 0, "difference": 0.5, "p_value": 0.5}
    with pytest.raises(ValueError, match="same questions"):
        compare([True], [True, False])


def test_inference_sweep_refuses_an_unknown_kind_of_thoughts(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "experiments.inference_sweep", str(tmp_path), "--thoughts",
                           "soft,hard", "--output", str(tmp_path / "sweep.json")], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 2
    assert "--thoughts lists any of soft, snapped, snap_thoughts, got 'soft,hard'" in done.stderr


def test_validation_problems_are_held_out_and_never_test_questions():
    """The inference sweep chooses settings on problems of the test split that the test set (its seed's first N)
    does not hold: none of them is a test question, and a depth without enough of them is refused."""
    from experiments.inference_sweep import validation_problems
    from experiments.run import arith_test_size
    from smollm_trm import arith

    problems = validation_problems(2, 50, seed=1, test_seed=0, test_size=300)
    tested = {p["question"] for p in arith.make_arith(300, 2, 0, "test")}
    assert len(problems) == 50 and not {p["question"] for p in problems} & tested
    assert all(arith.split_of(p["question"]) == "test" for p in problems)
    with pytest.raises(ValueError, match="validation problems outside the test set"):
        validation_problems(1, 50, seed=1, test_seed=0, test_size=arith_test_size(1, 0, 300))


def test_prefix_overlap_counts_the_questions_a_rows_written_lines_answer():
    """Line j of a row's written reasoning answers the complete question of its first j instructions, whatever the
    form the row asks in; a test problem that is such a question has had its result written in training."""
    from experiments.prefix_overlap import written_results

    complete = {"question": "Start with 7. Add 5. Multiply by 3. What is the result?", "reasoning": "7+5=12\n12*3=36"}
    partial = {"question": "Start with 2. Add 1. Add 4. What is the result after the first operation?",
               "reasoning": "2+1=3"}
    assert written_results([complete, partial]) == {
        "Start with 7. Add 5. What is the result?", "Start with 7. Add 5. Multiply by 3. What is the result?",
        "Start with 2. Add 1. What is the result?"}


class OracleSteps(torch.nn.Module):
    """Stands in for `StepsAlone` in `evaluate`: decodes each question's written steps as one-hot logits, with the
    last step's result wrong (`wrong="last_result"`) or the first step's operand (`wrong="first_operand"`)."""

    def __init__(self, chars, problems, wrong: str | None):
        super().__init__()
        self.head = torch.nn.Linear(1, 1)
        self.chars, self.lines = chars, {}
        for problem in problems:
            lines = problem["reasoning"].split("\n")
            if wrong == "last_result":
                left, result = lines[-1].rsplit("=", 1)
                lines[-1] = f"{left}={int(result) + 1}"
            elif wrong == "first_operand":
                left, result = lines[0].rsplit("=", 1)
                lines[0] = f"{left}0={result}"
            self.lines[problem["question"]] = lines

    def forward(self, questions, mask, steps, n_cycles):
        from experiments.trm_alone import PAD, encode_problems
        texts = ["".join(self.chars.chars[i] for i in row).rstrip(PAD) for row in questions.tolist()]
        fake = [{"question": text, "reasoning": "\n".join(self.lines[text])} for text in texts]
        _, _, targets = encode_problems(fake, self.chars, steps, 16)
        return torch.nn.functional.one_hot(targets, len(self.chars.chars)).float()


@pytest.mark.parametrize("wrong", [None, "last_result", "first_operand"])
def test_trm_alone_scores_each_step_result_and_the_answer(wrong):
    from experiments.trm_alone import Characters, evaluate
    from smollm_trm.arith import make_arith
    tests = {depth: make_arith(12, depth, seed=0, split="test") for depth in (1, 3)}
    problems = [p for rows in tests.values() for p in rows]
    chars = Characters([p["question"] + p["reasoning"] for p in problems])
    report, generations = evaluate(OracleSteps(chars, problems, wrong), chars, tests, num_latents=16, n_cycles=1)
    last_right = 0.0 if wrong == "last_result" else 100.0
    for depth in ("depth1", "depth3"):
        assert report[depth]["step_results"][:-1] == [100.0] * (len(report[depth]["step_results"]) - 1)
        assert report[depth]["step_results"][-1] == report[depth]["answer"] == last_right
        assert report[depth]["all_steps"] == (100.0 if wrong is None else 0.0)
        records = generations[depth]  # each problem in order, with what was decoded for it
        assert [r["question"] for r in records] == [p["question"] for p in tests[int(depth[5:])]]
        assert [r["correct"] for r in records] == [wrong != "last_result"] * len(records)
        for record, problem in zip(records, tests[int(depth[5:])]):
            assert (record["steps"] == problem["reasoning"].split("\n")) == (wrong is None)
            assert (record["predicted"] == problem["answer"]) == record["correct"]


def test_trm_alone_tests_on_the_harness_held_out_problems():
    from experiments.trm_alone import test_problems
    from smollm_trm.arith import make_arith, split_of
    tests = test_problems(5)
    assert [len(rows) for rows in tests.values()] == [5] * 6
    assert all(split_of(p["question"]) == "test" for rows in tests.values() for p in rows)
    assert tests[4] == make_arith(5, 4, seed=0, split="test")  # the harness's test seed


def test_trm_alone_targets_fill_the_steps_past_a_problems_depth():
    from experiments.trm_alone import FILL, Characters, encode_problems
    from smollm_trm.arith import make_arith
    problems = make_arith(2, 1, seed=0, split="train") + make_arith(2, 3, seed=0, split="train")
    chars = Characters([p["question"] + p["reasoning"] for p in problems])
    _, mask, targets = encode_problems(problems, chars, steps=4, num_latents=16)
    assert mask.sum(dim=1).tolist() == [len(p["question"]) for p in problems]
    for row, problem in enumerate(problems):
        lines = problem["reasoning"].split("\n")
        assert len(lines) == (1 if row < 2 else 3)
        for step, line in enumerate(lines + [""] * (4 - len(lines))):
            assert chars.decode(targets[row, step].tolist()) == line
            assert (targets[row, step, len(line):] == chars.index[FILL]).all()


@pytest.mark.parametrize("questions", ["partial", "packed"])
def test_trm_alone_trains_at_smoke_size(monkeypatch, tmp_path, questions):
    import argparse
    import experiments.trm_alone as trm_alone
    from experiments.paired_evals import correctness
    from experiments.trm_alone import StepsAlone, markdown, train, write_run
    asked, trained_steps = [], []
    make_arith = trm_alone.make_arith
    monkeypatch.setattr(trm_alone, "make_arith", lambda *a, **kw: asked.append(kw) or make_arith(*a, **kw))
    forward = StepsAlone.forward

    def recorded(self, questions, mask, steps, *args, **kwargs):
        if self.training:
            trained_steps.append(steps)
        return forward(self, questions, mask, steps, *args, **kwargs)

    monkeypatch.setattr(StepsAlone, "forward", recorded)
    args = argparse.Namespace(steps=2, batch_size=4, learning_rate=1e-3, train_size=40, test_size=3, width=32,
                              trm_width=32, num_latents=16, n_latent_steps=1, n_cycles=2, seed=0, log_every=1,
                              time_limit_s=math.inf, device="cpu", carry_gradient=True,
                              step_embedding=True, reread=True, compile_thoughts=None,
                              questions=questions)
    result = train(args)
    assert asked[0] == {"seed": 0, "split": "train", "questions": questions}  # the training rows, in the asked form
    # every training row runs as many steps as the longest has lines: a packed row's two problems, up to eight
    longest = max(len(row["reasoning"].split("\n")) for row in make_arith(40, (1, 4), 0, "train", questions=questions))
    assert trained_steps == [longest, longest] and (longest > 4) == (questions == "packed")
    assert [entry["step"] for entry in result["history"]] == [1, 2]
    assert all(len(result["test"][f"depth{d}"]["step_results"]) == d for d in range(1, 7))
    assert markdown(result).count("\n") == 7
    write_run(result, tmp_path / "run.json")
    assert "generations" not in json.loads((tmp_path / "run.json").read_text())
    assert (tmp_path / "run.md").read_text() == markdown(result) + "\n"
    for depth in range(1, 7):  # what paired_evals reads, question by question, as the report counted them
        questions, correct = correctness(tmp_path / "run" / f"depth{depth}" / "generations.jsonl")
        assert len(questions) == result["test"][f"depth{depth}"]["problems"] == 3
        assert 100 * sum(correct) / 3 == result["test"][f"depth{depth}"]["answer"]


def test_trm_alone_runs_the_supervision_steps_as_the_model_does_and_carry_gradient_reaches_earlier_steps():
    from experiments.trm_alone import StepsAlone
    from modeling_smollm_trm import Depth
    torch.manual_seed(0)
    model = StepsAlone(vocab=20, width=32, trm_width=32, num_latents=4, n_latent_steps=2, n_cycles=2)
    questions, mask = torch.randint(20, (3, 9)), torch.ones(3, 9, dtype=torch.bool)
    # the model's initialisation, but thoughts of RMS 1 for the linear head, not the token embeddings' 0.02
    assert torch.equal(model.trm.out_norm.weight, torch.ones(32))
    assert model.trm.out_proj.weight.std() < 0.03  # the model's std 0.02, not PyTorch's default (about 0.1 here)
    logits = model(questions, mask, steps=3, n_cycles=2)
    context = model.reader(input_ids=questions, attention_mask=mask.long()).last_hidden_state
    thinking = model.trm(context, mask, Depth(2, 3))
    reference = torch.stack([model.head(step.readout) for step in thinking.steps], dim=1)
    torch.testing.assert_close(logits, reference)

    def grads(carry_gradient: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()  # one cycle per step: the carry between steps is the only path that differs
        out = model(questions, mask, steps=3, n_cycles=1, carry_gradient=carry_gradient)
        out[:, 2].square().sum().backward()  # the last step's loss alone
        return out.detach(), [p.grad.clone() for p in model.trm.net.parameters()]

    detached, through = grads(False), grads(True)
    torch.testing.assert_close(detached[0], through[0])  # the same values
    assert any(not torch.allclose(a, b) for a, b in zip(detached[1], through[1]))  # more paths for the gradient


@pytest.mark.parametrize("carry_gradient", [False, True])
def test_trm_alone_step_embedding_tells_each_step_its_index_and_starts_as_none(carry_gradient):
    from experiments.trm_alone import StepsAlone
    torch.manual_seed(0)
    plain = StepsAlone(vocab=20, width=32, trm_width=32, num_latents=4, n_latent_steps=2, n_cycles=2)
    torch.manual_seed(0)
    indexed = StepsAlone(vocab=20, width=32, trm_width=32, num_latents=4, n_latent_steps=2, n_cycles=2,
                         step_embedding=True)
    questions, mask = torch.randint(20, (3, 9)), torch.ones(3, 9, dtype=torch.bool)
    before = plain(questions, mask, steps=4, n_cycles=2, carry_gradient=carry_gradient)
    torch.testing.assert_close(indexed(questions, mask, steps=4, n_cycles=2, carry_gradient=carry_gradient),
                               before)  # zeros: no change at first
    with torch.no_grad():
        indexed.step_embedding[2] = 1.0
    after = indexed(questions, mask, steps=4, n_cycles=2, carry_gradient=carry_gradient)
    torch.testing.assert_close(after[:, :2], before[:, :2])  # the steps before read their own rows
    assert not torch.allclose(after[:, 2], before[:, 2])
    after.square().sum().backward()
    grad = indexed.step_embedding.grad.abs().sum(dim=1)
    assert (grad[:4] > 0).all() and (grad[4:] == 0).all()  # every step run learns its row; the others stay 0


def test_trm_alone_reread_asks_the_compressor_with_the_last_steps_y():
    from experiments.trm_alone import StepsAlone
    torch.manual_seed(0)
    model = StepsAlone(vocab=20, width=32, trm_width=32, num_latents=4, n_latent_steps=2, n_cycles=2, reread=True)
    questions, mask = torch.randint(20, (3, 9)), torch.ones(3, 9, dtype=torch.bool)
    context = model.reader(input_ids=questions, attention_mask=mask.long()).last_hidden_state
    x = model.trm.compressor(context, mask)
    carry = model.trm.deep_recursion(x, model.trm.initial_carry(x), 2)
    first = model.head(model.trm.thoughts(carry.y))
    x = model.trm.compressor(context, mask, state=carry.y)  # the reference: the second step's x, asked by y
    second = model.head(model.trm.thoughts(model.trm.deep_recursion(x, carry.detach(), 2).y))
    logits = model(questions, mask, steps=2, n_cycles=2)
    torch.testing.assert_close(logits, torch.stack([first, second], dim=1))
    model.reread = False
    assert not torch.allclose(model(questions, mask, steps=2, n_cycles=2)[:, 1], second)


@pytest.mark.parametrize("carry_gradient", [False, True])
def test_trm_alone_reread_asks_at_every_later_step_with_y_detached_unless_the_gradient_is_carried(carry_gradient):
    from experiments.trm_alone import StepsAlone
    torch.manual_seed(0)
    model = StepsAlone(vocab=20, width=32, trm_width=32, num_latents=4, n_latent_steps=2, n_cycles=2, reread=True)
    questions, mask = torch.randint(20, (3, 9)), torch.ones(3, 9, dtype=torch.bool)
    states, compress = [], model.trm.compressor.forward
    model.trm.compressor.forward = lambda context, mask, state=None: states.append(state) or compress(context, mask,
                                                                                                        state)
    model(questions, mask, steps=3, n_cycles=2, carry_gradient=carry_gradient)
    assert states[0] is None and len(states) == 3
    assert all(state is not None and state.requires_grad == carry_gradient for state in states[1:])

