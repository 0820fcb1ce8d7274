"""Task loading: the local GSM8K split, GSM8K/MATH parsing, the arith generator checked by re-computation."""

import hashlib
import json
import operator
import re

import pytest

from eval.tasks import TASK_KINDS, load_task
from smollm_trm.arith import INSTRUCTION
from smollm_trm.arith import MAX_VALUE as ARITH_MAX_VALUE
from smollm_trm.arith import instructions as arith_instructions
from smollm_trm.arith import make_arith, parse_depth
from smollm_trm.arith import split_of as arith_split_of
from smollm_trm.gsm8k import LOCAL_DIR as GSM8K_DIR

GSM8K_ROWS = [
    {"question": "Ann has 2 bags of 617 nuts. How many nuts?", "answer": "2 * 617 = <<2*617=1234>>1,234 nuts.\n#### 1,234"},
    {"question": "What is 3 - 3?", "answer": "3 - 3 = <<3-3=0>>0\n#### 0"},
]
_OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
_STEP = re.compile(r"(Add|Subtract|Multiply by|Divide by) (\d+)\.")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def solve_arith(question: str, operations: int | None = None) -> tuple[int, int]:
    """Independent re-computation of an arith question: (result, number of operations); the value after the first
    `operations` of them if given."""
    value = int(re.match(r"Start with (\d+)\.", question).group(1))
    steps = _STEP.findall(question)
    for operation, operand in steps[:operations]:
        operand = int(operand)
        if operation == "Divide by":
            assert value % operand == 0, f"{question!r} divides {value} by {operand} with a remainder"
        value = {"Add": value + operand, "Subtract": value - operand, "Multiply by": value * operand}.get(
            operation, value // operand
        )
        assert 0 <= value <= ARITH_MAX_VALUE, f"{question!r} leaves [0, {ARITH_MAX_VALUE}]: {value}"
    return value, len(steps)


@pytest.mark.skipif(not GSM8K_DIR.is_dir(), reason=f"no local GSM8K copy at {GSM8K_DIR}")
def test_gsm8k_local_test_split():
    task = load_task("gsm8k")
    assert (task.name, task.kind, len(task.examples)) == ("gsm8k", "number", 1319)
    first = task.examples[0]
    assert first["question"].startswith("Janet")
    assert first["answer"] == "18"
    assert first["reasoning"] == (
        "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18 every day at the farmer\u2019s market."
    )
    assert all(re.fullmatch(r"-?\d+", ex["answer"]) for ex in task.examples)  # "1,600" became "1600"
    assert not any("<<" in ex["reasoning"] or "####" in ex["reasoning"] for ex in task.examples)
    assert len({ex["id"] for ex in task.examples}) == 1319


def test_gsm8k_parsing_from_file_and_folder(tmp_path):
    write_jsonl(tmp_path / "test.jsonl", GSM8K_ROWS)
    for path in (tmp_path, tmp_path / "test.jsonl"):
        examples = load_task("gsm8k", path=path).examples
        assert [ex["answer"] for ex in examples] == ["1234", "0"]
        assert examples[0]["reasoning"] == "2 * 617 = 1,234 nuts."
        assert examples[0]["question"] == GSM8K_ROWS[0]["question"]


def test_gsm8k_row_without_final_line_names_the_row(tmp_path):
    rows = [GSM8K_ROWS[0], {"question": "q", "answer": "no final line here"}]
    with pytest.raises(ValueError, match=r"gsm8k row 1 .*#### N"):
        load_task("gsm8k", path=write_jsonl(tmp_path / "bad.jsonl", rows))


def test_gsm8k_row_missing_a_field(tmp_path):
    with pytest.raises(ValueError, match=r"row 0 lacks field\(s\) \['answer'\]"):
        load_task("gsm8k", path=write_jsonl(tmp_path / "bad.jsonl", [{"question": "q"}]))


def test_gsm8k_missing_split_and_missing_path(tmp_path):
    write_jsonl(tmp_path / "test.jsonl", GSM8K_ROWS)
    with pytest.raises(FileNotFoundError, match="no validation.jsonl"):
        load_task("gsm8k", path=tmp_path, split="validation")
    with pytest.raises(FileNotFoundError, match="no file or folder"):
        load_task("gsm8k", path=tmp_path / "absent.jsonl")


def test_hub_name_offline_error(monkeypatch):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"'openai/gsm8k' is not a local file or folder.*config 'main'"):
        load_task("gsm8k", path="openai/gsm8k")


def test_math_answer_from_boxed_or_field(tmp_path):
    rows = [
        {"problem": "Half of 1?", "solution": "It is $\\boxed{\\dfrac{1}{2}}$."},
        {"problem": "Set?", "solution": "...", "answer": "\\left\\{ 1, 2 \\right\\}", "unique_id": "test/x/1.json"},
    ]
    task = load_task("math", path=write_jsonl(tmp_path / "math.jsonl", rows))
    assert task.kind == "latex"
    assert [ex["answer"] for ex in task.examples] == ["\\frac{1}{2}", "\\{1,2\\}"]
    assert [ex["id"] for ex in task.examples] == ["math-test-0", "test/x/1.json"]
    assert task.examples[0]["reasoning"] == rows[0]["solution"]


def test_math_original_folder_layout(tmp_path):
    (tmp_path / "test" / "algebra").mkdir(parents=True)
    for i, answer in enumerate(["3", "4"]):
        row = {"problem": f"p{i}", "solution": f"\\boxed{{{answer}}}"}
        (tmp_path / "test" / "algebra" / f"{i}.json").write_text(json.dumps(row))
    assert [ex["answer"] for ex in load_task("math", path=tmp_path).examples] == ["3", "4"]


def test_math_errors(tmp_path):
    with pytest.raises(ValueError, match="needs path="):
        load_task("math")
    rows = [{"problem": "p", "solution": "no box"}]
    with pytest.raises(ValueError, match="math row 0 .*neither an 'answer' nor"):
        load_task("math", path=write_jsonl(tmp_path / "m.jsonl", rows))


def test_sample_task():
    task = load_task("sample")
    assert (task.kind, len(task.examples)) == ("number", 10)
    assert all(re.fullmatch(r"\d+", ex["answer"]) for ex in task.examples)
    assert len({ex["question"] for ex in task.examples}) == 10
    assert task.examples[0] == {"id": "sample-0", "question": "What is 38 + 47?", "answer": "85", "reasoning": None}
    with pytest.raises(ValueError, match="only the 'test' split"):
        load_task("sample", split="train")


def test_arith_is_deterministic_per_seed():
    assert make_arith(50, (1, 4), seed=3, split="train") == make_arith(50, (1, 4), seed=3, split="train")
    assert make_arith(50, (1, 4), seed=3, split="train") != make_arith(50, (1, 4), seed=4, split="train")


@pytest.mark.parametrize("split", ["train", "test"])
def test_arith_gold_answers_and_reasoning_are_correct(split):
    for ex in make_arith(300, (1, 6), seed=0, split=split):
        result, _ = solve_arith(ex["question"])
        assert ex["answer"] == str(result), ex
        lines = ex["reasoning"].split("\n")
        assert lines[-1].endswith(f"={result}")
        for line in lines:  # every worked step is true arithmetic
            a, symbol, b, c = re.fullmatch(r"(\d+)([-+*/])(\d+)=(\d+)", line).groups()
            assert _OPERATORS[symbol](int(a), int(b)) == int(c), line


def test_arith_named_steps_repeat_each_instruction_before_its_worked_line():
    """`steps="named"`: the same questions and answers, each reasoning line the question's instruction, then the
    worked line of the default style."""
    worked, named = (make_arith(200, (1, 6), seed=0, split="train", steps=style) for style in ("worked", "named"))
    assert [(w["question"], w["answer"]) for w in worked] == [(n["question"], n["answer"]) for n in named]
    for w, n in zip(worked, named):
        asked = [match.group(0) for match in INSTRUCTION.finditer(n["question"])]
        expected = [f"{instruction} {line}" for instruction, line in zip(asked, w["reasoning"].split("\n"))]
        assert n["reasoning"].split("\n") == expected
    with pytest.raises(ValueError, match="steps must be one of"):
        make_arith(5, 2, seed=0, split="train", steps="numbered")
    assert load_task("arith", limit=5, depth="3", steps="named").examples == make_arith(5, 3, 0, "test", "named")
    with pytest.raises(ValueError, match="steps only applies to the arith task"):
        load_task("sample", steps="named")


def test_arith_partial_questions_ask_for_an_earlier_result_of_a_problem_of_the_split():
    """`questions="partial"`: about half the problems of depth >= 2 ask for the value after their first k < depth
    operations, with exactly those worked lines; the complete form and the problem of the first k instructions (which
    asks for the same value) both belong to the split, and no problem is asked twice."""
    partial = make_arith(600, (1, 4), seed=0, split="train", questions="partial")
    asked = re.compile(r"What is the result after the first (?:(\d+) operations|operation)\?$")
    shortened, problems = 0, set()
    for ex in partial:
        match = asked.search(ex["question"])
        complete = asked.sub("What is the result?", ex["question"])
        result, depth = solve_arith(complete)
        assert arith_split_of(complete) == "train" and complete not in problems, ex
        problems.add(complete)
        if match is None:
            assert ex["answer"] == str(result), ex
            continue
        shortened += 1
        operations = int(match.group(1) or 1)
        assert 1 <= operations < depth, ex
        prefix = ". ".join(complete.split(". ")[: operations + 1]) + ". What is the result?"
        assert arith_split_of(prefix) == "train" and solve_arith(prefix) == (int(ex["answer"]), operations), ex
        assert ex["answer"] == str(solve_arith(complete, operations)[0]), ex
        assert len(ex["reasoning"].split("\n")) == operations and ex["reasoning"].endswith(f"={ex['answer']}"), ex
    deep = sum(solve_arith(asked.sub("What is the result?", ex["question"]))[1] > 1 for ex in partial)
    assert 0.3 * deep < shortened < 0.6 * deep
    assert any(asked.search(ex["question"]).group(1) is None for ex in partial if asked.search(ex["question"]))
    with pytest.raises(ValueError, match="questions must be one of"):
        make_arith(5, 2, seed=0, split="train", questions="some")


def test_arith_packed_rows_are_two_problems_of_the_split_the_second_starting_anew():
    """`questions="packed"`: about half the rows are two problems of the split, each of the asked depth, one after the
    other: the question is the first without its "What is the result?" and then the second, the reasoning both
    problems' worked lines, the answer the second's result; no problem is asked twice."""
    rows = make_arith(600, (1, 4), seed=0, split="train", questions="packed")
    packed, problems = 0, []
    for ex in rows:
        parts = re.split(r" (?=Start with)", ex["question"])
        assert len(parts) in (1, 2), ex
        if len(parts) == 1:
            assert ex["answer"] == str(solve_arith(ex["question"])[0]), ex
            problems.append(ex["question"])
            continue
        packed += 1
        first, second = parts[0] + " What is the result?", parts[1]
        assert parts[0].endswith(".") and "What" not in parts[0], ex
        lines = ex["reasoning"].split("\n")
        (first_result, first_depth), (second_result, second_depth) = solve_arith(first), solve_arith(second)
        assert 1 <= first_depth <= 4 and 1 <= second_depth <= 4 and len(lines) == first_depth + second_depth, ex
        assert lines[first_depth - 1].endswith(f"={first_result}") and lines[-1].endswith(f"={second_result}"), ex
        assert lines[first_depth].startswith(re.match(r"Start with (\d+)", second).group(1)), ex  # starts anew
        assert ex["answer"] == str(second_result), ex
        assert arith_split_of(first) == arith_split_of(second) == "train", ex
        problems += [first, second]
    assert 0.35 * len(rows) < packed < 0.65 * len(rows)
    assert len(problems) == len(set(problems))
    assert max(len(ex["reasoning"].split("\n")) for ex in rows) == 8


def test_arith_complete_questions_are_those_every_earlier_experiment_trained_on():
    """The generator's complete problems are pinned: a change to its random stream would change every experiment's
    training data (the partial form draws its extra numbers only when asked for)."""
    rows = json.dumps(make_arith(200, (1, 4), seed=0, split="train")).encode()
    assert hashlib.sha256(rows).hexdigest() == "3f0be0755218a267a2fd141fbe7696a10cc90e43876cdef590ce756c46c46a31"


def test_arith_splits_are_disjoint_across_seeds_and_depths():
    train = {ex["question"] for seed in range(3) for ex in make_arith(300, (1, 3), seed, "train")}
    test = {ex["question"] for seed in range(3) for ex in make_arith(100, (1, 3), seed, "test")}
    assert not train & test
    assert all(arith_split_of(q) == "test" for q in test)
    assert len(make_arith(150, 1, seed=0, split="test")) == 150  # distinct within a split


def test_arith_depth_is_honoured():
    assert {solve_arith(ex["question"])[1] for ex in make_arith(40, 3, seed=0, split="test")} == {3}
    depths = {solve_arith(ex["question"])[1] for ex in make_arith(200, (2, 4), seed=0, split="train")}
    assert depths == {2, 3, 4}
    task = load_task("arith", split="train", limit=20, depth="5")
    assert len(task.examples) == 20 and all(solve_arith(ex["question"])[1] == 5 for ex in task.examples)


@pytest.mark.parametrize("depth, expected", [(3, (3, 3)), ((1, 4), (1, 4)), ("2", (2, 2)), ("1-4", (1, 4))])
def test_parse_depth(depth, expected):
    assert parse_depth(depth) == expected


@pytest.mark.parametrize("depth", ["0", "4-1", "a-b", (0, 2), "1-"])
def test_parse_depth_rejects(depth):
    with pytest.raises(ValueError, match="depth"):
        parse_depth(depth)


def test_arith_errors():
    with pytest.raises(ValueError, match="split must be one of"):
        make_arith(5, 2, seed=0, split="validation")
    with pytest.raises(ValueError, match=r"found only \d+ distinct test questions of depth 1-1"):
        make_arith(1000, 1, seed=0, split="test")


def test_load_task_limit_takes_the_first_examples(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", GSM8K_ROWS)
    assert load_task("gsm8k", path=path, limit=1).examples == load_task("gsm8k", path=path).examples[:1]
    with pytest.raises(ValueError, match="limit must be a positive"):
        load_task("gsm8k", path=path, limit=0)


def test_load_task_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'gsm9k'; known tasks: " + ", ".join(TASK_KINDS)):
        load_task("gsm9k")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="has no examples"):
        load_task("gsm8k", path=tmp_path / "empty.jsonl")
    with pytest.raises(ValueError, match="depth only applies to the arith task"):
        load_task("gsm8k", depth=3)
    with pytest.raises(ValueError, match="path only applies"):
        load_task("arith", path=tmp_path)


def test_arith_instructions_are_the_operations_of_the_worked_lines():
    """`instructions` reads back what a generated question asks, in order: each worked line's sign and operand."""
    for example in make_arith(200, (1, 6), seed=0, split="train"):
        worked = [re.match(r"\d+([-+*/])(\d+)=", line) for line in example["reasoning"].splitlines()]
        assert arith_instructions(example["question"]) == [(line[1], int(line[2])) for line in worked]
