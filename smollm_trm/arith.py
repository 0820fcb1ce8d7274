"""Generated multi-step arithmetic: "Start with 7. Add 5. Multiply by 3. What is the result?", with the worked lines
("7+5=12", "12*3=36") as reasoning and the result as the answer. The depth (operations per problem) is controlled, and
a question's split comes from a hash of its text, so train and test never share one whatever the seed and depth.

    make_arith(500, (1, 4), seed=0, split="train")   # [{"id", "question", "answer", "reasoning"}, ...]

With `steps="named"` each worked line first repeats the instruction it carries out ("Add 5. 7+5=12"): the next step
is then found by what the last one copied, which holds at every depth, where a step's place in a depth-4 training
problem can also be found from the end of the question (session 13's model, given a fifth step, read the fourth
instruction at step three). The questions and answers are the same in both styles.

With `questions="partial"` about half the problems of depth 2 or more ask for the result after their first k operations
("... What is the result after the first 2 operations?", 1 <= k < depth), with the first k worked lines as reasoning:
their last step is then not the question's last instruction, which in complete questions it always is (session 20: a
model trained on complete questions alone carried out the last instruction at its fourth step at depth 5, and
stopped). A partial question is asked only where its complete form and the complete problem of its first k
instructions (which asks for the same result) both belong to its split, and a problem is asked once, so no test
problem is asked in training (a test problem's result can still be a line of a longer problem's written reasoning,
in either form: docs/RESULTS.md, Experiment 1p).

With `questions="packed"` about half the examples are two problems of the split one after the other, the second
starting anew ("Start with 7. Add 5. Start with 3. Multiply by 2. What is the result?"), the worked lines of both as
reasoning and the second's result as the answer. A row then takes up to twice the depth's steps while no problem has
more operations than the depth, so that a fifth step, carrying out the next instruction after the fourth, is not new
(on complete questions alone the model and the TRM's own recursion stop after four: Experiments 1o and 1u); only a
chain of five operations is.
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
# every question asks for the result; about half ask for an earlier one; about half are two problems in one
QUESTION_FORMS = ("complete", "partial", "packed")
PARTIAL_SHARE = 0.5  # of the problems of depth >= 2, with questions="partial"
PACKED_SHARE = 0.5  # of the examples, with questions="packed"
RESULT_QUESTION = " What is the result?"  # how a complete question ends


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
    question = " ".join(instructions) + RESULT_QUESTION
    return {"question": question, "answer": str(value), "reasoning": "\n".join(lines)}


def prefix_question(question: str, operations: int) -> str:
    """The complete question made of a question's start and first `operations` instructions: what its written
    reasoning's line `operations` answers, and what the partial form "after the first `operations`" asks."""
    head = re.sub(r" What is the result[^?]*\?$", "", question)
    sentences = [sentence.strip() for sentence in re.findall(r"[^.]+\.", head)]
    return " ".join(sentences[: operations + 1]) + RESULT_QUESTION


def _partial(problem: dict, operations: int) -> dict:
    """The problem asking for its result after its first `operations` operations: the first worked lines."""
    lines = problem["reasoning"].split("\n")[:operations]
    asked = f" What is the result after the first {f'{operations} operations' if operations > 1 else 'operation'}?"
    return {"question": problem["question"].removesuffix(RESULT_QUESTION) + asked,
            "answer": lines[-1].rsplit("=", 1)[1], "reasoning": "\n".join(lines)}


def _packed(first: dict, second: dict) -> dict:
    """The two problems one after the other, the second starting anew: the result after both."""
    return {"question": first["question"].removesuffix(RESULT_QUESTION) + " " + second["question"],
            "answer": second["answer"], "reasoning": first["reasoning"] + "\n" + second["reasoning"]}


def split_of(question: str) -> str:
    """The split a question belongs to, from a hash of its text: the same for every seed and depth, so never both."""
    bucket = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big") % 100
    return "test" if bucket < TEST_PERCENT else "train"


def make_arith(n: int, depth: int | tuple[int, int], seed: int, split: str, steps: str = "worked",
               questions: str = "complete") -> list[dict]:
    """`n` distinct multi-step arithmetic problems of `split`, each `depth` operations long (or a range of depths),
    their reasoning lines in the style `steps` (`STEP_STYLES`), their questions of the form `questions`
    (`QUESTION_FORMS`; a partial question's depth is its complete form's; each part of a packed row is of `depth`)."""
    if split not in SPLITS:
        raise ValueError(f"arith split must be one of {SPLITS}, got {split!r}")
    if steps not in STEP_STYLES:
        raise ValueError(f"arith steps must be one of {STEP_STYLES}, got {steps!r}")
    if questions not in QUESTION_FORMS:
        raise ValueError(f"arith questions must be one of {QUESTION_FORMS}, got {questions!r}")
    if n < 1:
        raise ValueError(f"arith needs n >= 1 examples, got n={n}")
    low, high = parse_depth(depth)
    rng = random.Random(seed)
    examples, seen = [], set()
    for _ in range(TRIES_PER_EXAMPLE * n):
        operations = rng.randint(low, high)
        problem = _problem(rng, operations, steps)
        complete = problem["question"]
        if split_of(complete) != split or complete in seen:
            continue
        seen.add(complete)
        if questions == "partial" and operations > 1 and rng.random() < PARTIAL_SHARE:
            # Only where the same result, asked by the problem of the first k instructions, is also this split's.
            shorter = [k for k in range(1, operations) if split_of(prefix_question(complete, k)) == split]
            if shorter:
                problem = _partial(problem, rng.choice(shorter))
        if questions == "packed" and rng.random() < PACKED_SHARE:
            # Only with a second problem of the split not asked before: no test problem is part of a training row.
            second = _problem(rng, rng.randint(low, high), steps)
            if split_of(second["question"]) == split and second["question"] not in seen:
                seen.add(second["question"])
                problem = _packed(problem, second)
        examples.append({"id": f"arith-{split}-{seed}-{len(examples)}", **problem})
        if len(examples) == n:
            return examples
    raise ValueError(
        f"found only {len(examples)} distinct {split} questions of depth {low}-{high} in "
        f"{TRIES_PER_EXAMPLE * n} tries, asked for {n}; ask for fewer or raise the depth"
    )
