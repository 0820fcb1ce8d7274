"""Exact-match accuracy of final answers, with a 95% Wilson score interval.

`evaluate` copies this script into its module cache and imports it on its own, so it cannot import the
`eval` package. It therefore compares strings strictly: pass answers already normalised by
`eval.answers` (`extract_answer` for predictions, a task's `answer` field for references), with "" for
a generation that had no answer. Load it through `eval.load_metric()`.
"""

import math

import datasets
import evaluate

# Two-sided 95% normal quantile, the z of the Wilson interval.
Z_95 = 1.959963984540054

_DESCRIPTION = "Share of predictions equal to their reference, with a 95% Wilson score interval."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list[str]): normalised predicted answers; "" when no answer was found.
    references (list[str]): normalised gold answers, none empty.
Returns:
    accuracy (float): share of exact matches.
    ci_low (float), ci_high (float): 95% Wilson score interval of the accuracy.
    n (int): number of examples.
Example:
    >>> metric = evaluate.load("eval/metrics/exact_match")
    >>> metric.compute(predictions=["18", ""], references=["18", "3"])["accuracy"]
    0.5
"""
_CITATION = """\
@article{wilson1927probable,
  title={Probable inference, the law of succession, and statistical inference},
  author={Wilson, Edwin B.},
  journal={Journal of the American Statistical Association},
  volume={22}, number={158}, pages={209--212}, year={1927}
}
"""


def wilson_interval(correct: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion: unlike the normal one, it stays in [0, 1] at 0 or n."""
    p = correct / n
    denominator = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denominator
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMatch(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions: list[str], references: list[str]) -> dict:
        if not references:
            raise ValueError("exact_match needs at least one prediction/reference pair, got none")
        empty = [i for i, reference in enumerate(references) if not reference]
        if empty:
            raise ValueError(f"references must be non-empty normalised answers; empty at indices {empty[:10]}")
        correct = sum(prediction == reference for prediction, reference in zip(predictions, references))
        n = len(references)
        ci_low, ci_high = wilson_interval(correct, n)
        return {"accuracy": correct / n, "ci_low": ci_low, "ci_high": ci_high, "n": n}
