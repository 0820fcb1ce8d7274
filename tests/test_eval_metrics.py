"""The exact_match `evaluate` module, loaded offline from its folder, against hand-computed values."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from eval import METRICS_DIR, extract_answer, load_metric

ROOT = Path(__file__).resolve().parent.parent
Z = 1.959963984540054
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def metric():
    for name, value in OFFLINE.items():
        os.environ.setdefault(name, value)
    return load_metric()


def test_all_right_and_none_right(metric):
    n = 10
    right = metric.compute(predictions=["18"] * n, references=["18"] * n)
    wrong = metric.compute(predictions=[""] * n, references=["18"] * n)
    # At 10 of 10 the Wilson bounds are n / (n + z^2) and 1; at 0 of 10 they are 0 and z^2 / (n + z^2).
    assert right == pytest.approx({"accuracy": 1.0, "ci_low": n / (n + Z**2), "ci_high": 1.0, "n": n})
    assert wrong == pytest.approx({"accuracy": 0.0, "ci_low": 0.0, "ci_high": Z**2 / (n + Z**2), "n": n})
    assert right["ci_low"] == pytest.approx(0.7225, abs=1e-4)


def test_wilson_interval_by_hand(metric):
    # 2 of 4 right: p = 0.5, z^2 = 3.8415, denominator 1 + z^2/4 = 1.96036, centre (0.5 + 0.48018) / 1.96036 = 0.5,
    # half-width z * sqrt(0.25/4 + 3.8415/64) / 1.96036 = 1.96 * 0.35003 / 1.96036 = 0.34996.
    result = metric.compute(predictions=["1", "2", "", "9"], references=["1", "2", "3", "4"])
    assert result["accuracy"] == 0.5 and result["n"] == 4
    assert result["ci_low"] == pytest.approx(0.15004, abs=1e-4)
    assert result["ci_high"] == pytest.approx(0.84996, abs=1e-4)


def test_comparison_is_strict_on_normalised_answers(metric):
    generations = ["so 1,000 dollars\n#### $1,000.00", "\\boxed{42}", "no idea"]
    predictions = [extract_answer(text) or "" for text in generations]
    result = metric.compute(predictions=predictions, references=["1000", "42", "7"])
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert metric.compute(predictions=["18.0"], references=["18"])["accuracy"] == 0.0  # not normalised: no match


def test_errors(metric):
    with pytest.raises(ValueError, match="empty at indices \\[1\\]"):
        metric.compute(predictions=["1", ""], references=["1", ""])
    with pytest.raises(ValueError, match="unknown metric 'bleu'; known metrics: exact_match"):
        load_metric("bleu")


def test_evaluate_load_offline_in_a_fresh_process(tmp_path):
    code = (
        "import evaluate; "
        f"m = evaluate.load({str(METRICS_DIR / 'exact_match')!r}); "
        "print(m.compute(predictions=['3', '4'], references=['3', '5'])['accuracy'])"
    )
    env = {**os.environ, **OFFLINE, "HF_HOME": str(tmp_path)}  # an empty cache: nothing comes from earlier runs
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "0.5"
