"""The GPU benchmarks run end to end on the CPU at small sizes (their timings then mean nothing), so that a device call
is never spent on a broken script; what they count without a clock is checked."""

import json
import math
import subprocess
import sys

import pytest
from conftest import ROOT
from test_train_sft import ENV, backbone, cli, write_data  # noqa: F401 (backbone is a fixture)


def run_bench(script: str, *args: str, env: dict | None = None) -> str:
    result = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True,
                            env=env or ENV, cwd=ROOT / "bench", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_depth_step_counts_where_the_depth_recipes_operations_run(tmp_path):
    out = run_bench("depth_step.py", "--batch", "2", "--steps", "1", "--warmup", "1", "--out", str(tmp_path),
                    "--arms", "none,pause_tokens,trm_tokens_feedback3,none (no cuDNN),trm_tokens_feedback3 compiled")
    rows = {row["arm"]: row for row in json.loads((tmp_path / "depth_step.json").read_text())["rows"]}
    # an arm that fails is left out (session 21: the compiled arm passed a mode compile_thoughts refuses, on the GPU)
    assert set(rows) == {"none", "pause_tokens", "trm_tokens_feedback3", "none (no cuDNN)",
                         "trm_tokens_feedback3 compiled"}, out
    assert rows["none"]["cudnn_attention"] and not rows["none (no cuDNN)"]["cudnn_attention"]
    assert rows["none"]["forward_ops"] < rows["pause_tokens"]["forward_ops"] < rows["trm_tokens_feedback3"]["forward_ops"]
    assert rows["trm_tokens_feedback3"]["trm_network_op_share"] > 0.5
    assert rows["pause_tokens"]["trm_network_op_share"] == 0
    assert "| trm_tokens_feedback3 | eager |" in out


def test_depth_answer_counts_the_sequential_passes_of_each_recipes_answer(tmp_path):
    """Exact counts (depth.yaml's TRM: n 4, T 3): written reasoning is one backbone pass per token; a latent step of
    the recipe is 5 supervision steps read by the backbone, of 3 x (4 + 1) network calls each; one of the cycles arm
    is 3 x 2 rounds, each read by the backbone, of 4 + 1 calls each. An emitted <think> adds its decoding step."""
    out = run_bench("depth_answer.py", "--batch_sizes", "1", "--repeats", "1", "--warmup", "0", "--out",
                    str(tmp_path))
    rows = {(row["arm"], row["latent_steps"]): row for row in
            json.loads((tmp_path / "depth_answer.json").read_text())["rows"]}
    counts = {key: (row["new_tokens"], row["backbone_passes"], row["trm_network_calls"]) for key, row in rows.items()}
    assert counts[("cot", "-")] == (34, 34, 0)
    assert counts[("trm recipe", "given")] == (4, 4 * 5 + 4, 4 * 5 * 3 * 5)
    assert counts[("trm cycles", "given")] == (4, 4 * 3 * 2 + 4, 4 * 3 * 2 * 5)
    assert counts[("trm cycles", "emitted")] == (7, 4 * 3 * 2 + 7, 4 * 3 * 2 * 5)
    assert counts[("pause", "given")][1] < counts[("pause", "emitted")][1] < 34
    assert rows[("cot", "-")]["speedup_b1"] == 1 and "| trm cycles | given | 4 | 28 |" in out


def test_decode_overhead_times_every_arm_beside_transformers_own(tmp_path):
    out = run_bench("decode_overhead.py", "--num_latents", "4", "--new_tokens", "2", "--repeats", "1",
                    "--out", str(tmp_path))
    rows = json.loads((tmp_path / "decode_overhead.json").read_text())["rows"]
    assert [(row["arm"], row["batch"]) for row in rows] == [
        (arm, batch) for batch in (1, 16) for arm in ("hf", "wrapper", "after thoughts")]
    # a difference of two timings: its sign is noise at two tokens on a busy CPU
    assert all(math.isfinite(row["ms_per_step"]) for row in rows) and "| after thoughts |" in out


def test_train_step_runs_every_manual_loop_arm(tmp_path):
    out = run_bench("train_step.py", "--batch", "1", "--length", "64", "--steps", "1", "--no-trainers",
                    "--out", str(tmp_path), env={**ENV, "BENCH_TINY": "1"})
    rows = json.loads((tmp_path / "train_step.json").read_text())["rows"]
    assert len(rows) == 9 and all(row["step_s"] > 0 for row in rows), out
    thinking = {row["arm"]: row for row in rows if row["K"]}
    assert thinking["trm K=64 x4 <think>"]["positions_per_s"] > thinking["trm K=64 x4 <think>"]["tokens_per_s"]
    assert "trm_share" in thinking["trm K=256"]


def test_profile_train_sft_times_every_step_and_profiles_the_one_asked(backbone, tmp_path):  # noqa: F811
    flags = cli(backbone, write_data(tmp_path, "qa"), tmp_path / "run", "--max_steps", "3")
    out = run_bench("profile_train_sft.py", "--profile_step", "1", "--out", str(tmp_path / "out"), "--", *flags)
    result = json.loads((tmp_path / "out" / "profile_train_sft.json").read_text())
    assert len(result["step_times_s"]) == 3 and result["profile_step"] == 1, out
    (row,) = result["rows"]
    assert row["aten_ops"] > 100 and row["host_s"] > 0 and row["cudnn_attention"] is False
    assert "aten::" in (tmp_path / "out" / "profile_train_sft.txt").read_text()


def test_profile_train_sft_refuses_a_step_the_run_never_reaches(backbone, tmp_path):  # noqa: F811
    flags = cli(backbone, write_data(tmp_path, "qa"), tmp_path / "run", "--max_steps", "3")
    with pytest.raises(AssertionError, match="never reached"):
        run_bench("profile_train_sft.py", "--profile_step", "3", "--out", str(tmp_path / "out"), "--", *flags)
