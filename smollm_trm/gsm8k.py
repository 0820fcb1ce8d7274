"""GSM8K (train 7,473 / test 1,319, MIT): where it is, and the one parser of its worked solutions.

A solution is worked lines with calculator annotations (`48/2 = <<48/2=24>>24`), then a final `#### N` line.
"""

from __future__ import annotations

import re
from pathlib import Path

LOCAL_DIR = Path(__file__).resolve().parent.parent.parent / "shared/data/gsm8k"  # ../shared beside the checkout
HUB_ID = "openai/gsm8k"
HUB_CONFIG = "main"
FINAL_MARK = "####"
FINAL_LINE = re.compile(rf"^{FINAL_MARK}", re.MULTILINE)  # what tells a GSM8K solution from another answer
CALCULATOR_ANNOTATION = re.compile(r"<<([^>]*)>>")


def split_solution(solution: str, equations: bool = False) -> tuple[str, str]:
    """(the worked solution without calculator annotations, the final answer N of `#### N` as written); raises
    `ValueError` with the reason when there is not exactly one such line, the last. With `equations`, the reasoning
    is instead the annotations' equations one per line (`48/2=24`), the compact form GSM8k-Aug trains on."""
    worked, mark, final = solution.rpartition(FINAL_MARK)
    if not mark:
        raise ValueError(f"no final '{FINAL_MARK} N' line")
    # With two markers ("#### 1 #### 2") the last one would win silently, and the other would train as reasoning.
    if FINAL_MARK in worked:
        raise ValueError(f"{solution.count(FINAL_MARK)} '{FINAL_MARK}' markers, expected one final '{FINAL_MARK} N' "
                         "line")
    final = final.strip()
    if not final:
        raise ValueError(f"nothing after '{FINAL_MARK}'")
    if "\n" in final:
        raise ValueError(f"'{FINAL_MARK} N' is not the last line (after it: {final!r})")
    if equations:
        return "\n".join(equation.strip() for equation in CALCULATOR_ANNOTATION.findall(worked)), final
    return CALCULATOR_ANNOTATION.sub("", worked).strip(), final
