"""Paired comparison of two models that answered the same questions: McNemar's exact test on the questions where
exactly one of them is right. It uses the pairing the two Wilson intervals ignore, so it separates arms whose
intervals overlap when their answers differ on few questions.

    compare([True, True, False, ...], [True, False, False, ...])
    # {"n": 300, "first_only": 21, "second_only": 9, "difference": 0.04, "p_value": 0.043}
"""

from __future__ import annotations

from math import comb


def mcnemar_p_value(first_only: int, second_only: int) -> float:
    """Two-sided exact McNemar p-value: under "neither is better", each discordant question is a fair coin."""
    discordant = first_only + second_only
    if discordant == 0:
        return 1.0
    tail = sum(comb(discordant, k) for k in range(min(first_only, second_only) + 1)) / 2**discordant
    return min(1.0, 2 * tail)


def compare(first: list[bool], second: list[bool]) -> dict:
    """McNemar's test of two models' correctness on the same questions, in the same order."""
    if len(first) != len(second):
        raise ValueError(f"a paired comparison needs the same questions: got {len(first)} and {len(second)} answers.")
    if not first:
        raise ValueError("a paired comparison needs at least one question.")
    first_only = sum(a and not b for a, b in zip(first, second))
    second_only = sum(b and not a for a, b in zip(first, second))
    return {"n": len(first), "first_only": first_only, "second_only": second_only,
            "difference": (first_only - second_only) / len(first),
            "p_value": mcnemar_p_value(first_only, second_only)}
