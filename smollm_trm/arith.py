"""Generated multi-step arithmetic: "Start with 7. Add 5. Multiply by 3. What is the result?", with the worked lines
("7+5=12", "12*3=36") as reasoning and the result as the answer. The depth (operations per problem) is controlled, and
a question's split comes from a hash of its text, so train and test never share one whatever the seed and depth.

    make_arith(500, (1, 4), seed=0, split="train")   # [{"id", "question", "answer", "reasoning"}, ...]

With `steps="named"` each worked line first repeats the instruction it carries out ("Add 5. 7+5=12"): the next step
is then found by what the last one copied, which holds at every depth, where a step's place in a depth-4 training
problem can also be found from the end of the question (session 13's model, given a fifth step, read the fourth
instruction at step three). The questions and answers are the same in both styles.
"""

from __future__ import annotations

import hashlib
import random
import re

SPLITS = ("train", "test")
TEST_PERCENT = 20  # share of all possible questions that belong to the test split
DEFAULT_SIZE = 500
DEFAULT_DEPTH = (1, 4)
START = (1, 20)  # range of the starting value
TERM = (1, 20)  # range of what is added or subtracted
FACTOR = (2, 9)  # range of multipliers and divisors
MAX_VALUE = 999  # no intermediate value goes above this (nor below 0)
OPERATIONS = {"Add": "+", "Subtract": "-", "Multiply by": "*", "Divide by": "/"}  # an instruction's words, its sign
INSTRUCTION = re.compile(rf"({'|'.join(OPERATIONS)}) (\d+)\.")  # one operation of a question: its words, operand
TRIES_PER_EXAMPLE = 100  # before giving up on finding n distinct questions
STEP_STYLES = ("worked", "named")  # a reasoning line: "7+5=12", or the instruction first: "Add 5. 7+5=12"


def parse_depth(depth: int | tuple[int, int] | str) -> tuple[int, int]:
    """`3`, `(1, 4)` or the command-line forms `"3"` / `"1-4"` -> an inclusive (low, high) range of steps."""
    if isinstance(depth, str):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", depth)
        if match is None:
            raise ValueError(f"depth must look like '3' or '1-4', got {depth!r}")
        depth = (int(match.group(1)), int(match.group(2) or match.group(1)))
    low, high = (depth, depth) if isinstance(depth, int) else depth
    if not 1 <= low <= high:
        raise ValueError(f"depth needs 1 <= low <= high, got {depth!r}")
    return low, high


def _step(rng: random.Random, value: int) -> tuple[str, str, int]:
    """One operation that keeps the value a bounded non-negative integer: (instruction, worked line, new value)."""
    term, factor = rng.randint(*TERM), rng.randint(*FACTOR)
    options = []
    if value + term <= MAX_VALUE:
        options.append((f"Add {term}.", f"{value}+{term}={value + term}", value + term))
    if value - term >= 0:
        options.append((f"Subtract {term}.", f"{value}-{term}={value - term}", value - term))
    if value * factor <= MAX_VALUE:
        options.append((f"Multiply by {factor}.", f"{value}*{factor}={value * factor}", value * factor))
    divisors = [d for d in range(FACTOR[0], FACTOR[1] + 1) if value > 0 and value % d == 0]
    if divisors:
        divisor = rng.choice(divisors)
        options.append((f"Divide by {divisor}.", f"{value}/{divisor}={value // divisor}", value // divisor))
    return rng.choice(options)  # never empty: when adding overflows, value > MAX - term, so subtracting works


def instructions(question: str) -> list[tuple[str, int]]:
    """The (sign, operand) of each operation a generated question asks for, in order: `[("+", 5), ("*", 3)]`."""
    return [(OPERATIONS[words], int(operand)) for words, operand in INSTRUCTION.findall(question)]


def _problem(rng: random.Random, depth: int, steps: str) -> dict:
    value = rng.randint(*START)
    instructions, lines = [f"Start with {value}."], []
    for _ in range(depth):
        instruction, line, value = _step(rng, value)
        instructions.append(instruction)
        lines.append(f"{instruction} {line}" if steps == "named" else line)
    question = " ".join(instructions + ["What is the result?"])
    return {"question": question, "answer": str(value), "reasoning": "\n".join(lines)}


def split_of(question: str) -> str:
    """The split a question belongs to, from a hash of its text: the same for every seed and depth, so never both."""
    bucket = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big") % 100
    return "test" if bucket < TEST_PERCENT else "train"


def make_arith(n: int, depth: int | tuple[int, int], seed: int, split: str, steps: str = "worked") -> list[dict]:
    """`n` distinct multi-step arithmetic problems of `split`, each `depth` operations long (or a range of depths),
    their reasoning lines in the style `steps` (`STEP_STYLES`)."""
    if split not in SPLITS:
        raise ValueError(f"arith split must be one of {SPLITS}, got {split!r}")
    if steps not in STEP_STYLES:
        raise ValueError(f"arith steps must be one of {STEP_STYLES}, got {steps!r}")
    if n < 1:
        raise ValueError(f"arith needs n >= 1 examples, got n={n}")
    low, high = parse_depth(depth)
    rng = random.Random(seed)
    examples, seen = [], set()
    for _ in range(TRIES_PER_EXAMPLE * n):
        problem = _problem(rng, rng.randint(low, high), steps)
        if problem["question"] in seen or split_of(problem["question"]) != split:
            continue
        seen.add(problem["question"])
        examples.append({"id": f"arith-{split}-{seed}-{len(examples)}", **problem})
        if len(examples) == n:
            return examples
    raise ValueError(
        f"found only {len(examples)} distinct {split} questions of depth {low}-{high} in "
        f"{TRIES_PER_EXAMPLE * n} tries, asked for {n}; ask for fewer or raise the depth"
    )
