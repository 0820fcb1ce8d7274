"""Answer extraction and normalisation against hand-written expected answers."""

import pytest

from eval.answers import answers_match, extract_answer, last_boxed, normalize_answer, split_gsm8k

NUMBER_CASES = [
    # GSM8K marker, with currency, thousands commas and trailing zeros
    ("Janet sells 9 eggs.\nShe makes 9 * 2 = $18.\n#### 18", "18"),
    ("She earns $1,234.50 a week.\n#### $1,234.50", "1234.5"),
    ("#### 1,450,000", "1450000"),
    ("#### 18.00", "18"),
    ("#### -3", "-3"),
    ("Total: 4 bags.\n#### 5 bags\nI hope that helps, 7 times over.", "5"),  # the marker beats later numbers
    ("#### Step 1\nAdd 2 and 3 to get 5.", "5"),  # a markdown heading is not a marker
    # \boxed, nested braces, fractions kept as given
    ("So the answer is \\boxed{42}.", "42"),
    ("First \\boxed{1}, then corrected: \\boxed{\\$2{,}000}", "2000"),
    ("The answer is \\boxed{\\frac{3}{4}}.", "3/4"),
    ("The answer is 3/4 of the cake.", "3/4"),
    # last number of free text, units and words stripped
    ("7+5=12\n12*3=36\n36-4=32", "32"),
    ("The answer is 50%.", "50"),
    ("It costs 12.0 dollars.", "12"),
    ("The temperature was -0 degrees.", "0"),
    ("Between 10-20 apples.", "20"),  # a binary minus is not a sign
    ("Pour .5 litres.", "0.5"),
    ("It is \u22127.", "-7"),  # unicode minus
    ("Count 1, 2, 3.", "3"),  # a list is not a thousands-grouped number
]

MALFORMED = ["", "   ", "I don't know.", "The answer is \\boxed{12", "\\boxed{}", "\\boxed{\\frac{1}{2}", "####\n"]

LATEX_CASES = [
    ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\tfrac12}", "\\frac{1}{2}"),
    ("\\boxed{\\frac1{2}}", "\\frac{1}{2}"),
    ("\\boxed{1/2}", "\\frac{1}{2}"),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
    ("\\boxed{\\left( 3, \\frac{1}{2} \\right)}", "(3,\\frac{1}{2})"),
    ("\\boxed{x = 5}", "5"),
    ("\\boxed{90^\\circ}", "90"),
    ("\\boxed{90^{\\circ}}", "90"),
    ("\\boxed{5\\text{ cm}}", "5"),
    ("\\boxed{\\text{(A)}}", "(A)"),
    ("\\boxed{10\\%}", "10"),
    ("\\boxed{\\$18.00}", "18"),
    ("\\boxed{2\\!\\sqrt2}", "2\\sqrt{2}"),
    ("\\boxed{1{,}000}", "1000"),
    ("no box, so the last number: 7.50", "7.5"),
]


@pytest.mark.parametrize("text, expected", NUMBER_CASES)
def test_extract_number(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text", MALFORMED)
@pytest.mark.parametrize("kind", ["number", "latex"])
def test_malformed_generation_gives_none(text, kind):
    assert extract_answer(text, kind) is None


@pytest.mark.parametrize("text, expected", LATEX_CASES)
def test_extract_latex(text, expected):
    assert extract_answer(text, "latex") == expected


def test_last_boxed_matches_nested_braces():
    assert last_boxed("\\boxed{1} and \\boxed{\\frac{a^{2}}{b}}") == "\\frac{a^{2}}{b}"
    assert last_boxed("so \\boxed 5$.") == "5"
    assert last_boxed("\\fbox{7}") == "7"
    assert last_boxed("no box") is None


def test_split_gsm8k():
    assert split_gsm8k("a\nb = 3\n#### 3") == ("a\nb = 3", "3")
    assert split_gsm8k("#### Heading\ntext") is None


@pytest.mark.parametrize(
    "pred, gold, kind, expected",
    [
        ("18.0", "18", "number", True),
        ("0.50", ".5", "number", True),
        ("$1,000", "1000", "number", True),
        ("-0", "0", "number", True),
        ("3/4", "0.75", "number", False),  # fractions are kept as given
        ("6/8", "3/4", "number", False),
        ("19", "18", "number", False),
        (None, "18", "number", False),
        ("", "", "number", False),
        ("\\dfrac{1}{2}", "\\frac12", "latex", True),
        ("0.5", "\\frac{1}{2}", "latex", True),  # math-verify: numerically equal
        ("\\sqrt{8}", "2\\sqrt{2}", "latex", True),  # symbolically equal
        ("\\{2, 1\\}", "\\{1, 2\\}", "latex", True),  # the same set
        ("\\frac{1}{3}", "\\frac{1}{2}", "latex", False),
        ("0.5", "1/2", "number", False),  # GSM8K's path stays exact
    ],
)
def test_answers_match(pred, gold, kind, expected):
    assert answers_match(pred, gold, kind) is expected


def test_normalize_answer_keeps_text_without_a_number():
    assert normalize_answer("  Yes  Indeed ") == "yes indeed"


def test_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="'roman'"):
        extract_answer("XII", "roman")
