r"""Final-answer extraction and normalisation for math evaluation.

A generation's answer span is, in order of preference: the number after the last `#### ` line (GSM8K;
a `####` line without a number, such as a markdown heading, is not a marker); the content of the last
`\boxed{...}` / `\fbox{...}` (MATH; nested braces are matched); else the whole text, from which the
last number is taken. Two answer kinds are normalised:

* "number": the last number of the span, canonicalised. Thousands commas (LaTeX `{,}` too), currency,
  `%`, units and words around it are dropped; `\frac{a}{b}` becomes `a/b`; decimals go through
  `Decimal`, so `18.00`, `18.0` and `18` are equal, `0.50` equals `.5`, and `-0` is `0`. Fractions are
  kept as written (`3/4` is not `0.75`, `6/8` is not `3/4`). Scientific notation is not parsed.
* "latex": the simple rewrites of the MATH reference checker. Removed: spaces, `\left`/`\right`, `\!`,
  `\,` and other spacing, `\displaystyle`, `$`, `\%`/`%`, degrees (`^\circ`, `^{\circ}`), a trailing
  `\text{...}`/`\mbox{...}` unit, a short left-hand side (`x = 5` -> `5`). Rewritten: `\dfrac`/`\tfrac`
  -> `\frac`, `\frac12` -> `\frac{1}{2}`, `\sqrt2` -> `\sqrt{2}`, `1/2` -> `\frac{1}{2}`, other
  `\text{X}` -> `X`, `{,}` -> `,`; a span that is a plain number is canonicalised as for "number"
  (`1,000` -> `1000`, `.5` -> `0.5`). Mathematical equivalence (`0.5` vs `\frac{1}{2}`, reordered sets,
  `\sqrt{8}` vs `2\sqrt{2}`) is `answers_match`'s, through math-verify.

Malformed generations (empty, no number, an unbalanced `\boxed{`) give None; nothing here raises on
model output.
"""

import re
from decimal import Decimal

ANSWER_KINDS = ("number", "latex")

# A `####` line only counts as the GSM8K answer marker when a number follows, so that a markdown
# heading such as "#### Step 1" in a generation is not taken for the answer.
_GSM8K_MARKER = re.compile(r"^[ \t]*####[ \t]*([$\u20ac\u00a3]?[ \t]*[-\u2212]?\.?\d.*?)[ \t]*$", re.MULTILINE)
_BOX_COMMANDS = ("\\boxed", "\\fbox")
# A minus sign only counts when it is not a binary minus ("36-4"); thousands groups need exactly three
# digits so that a list "1,2,3" is not read as 123.
_NUMBER = re.compile(r"(?:(?<![\w)\]}])-)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+)?|(?<![\w.])\.\d+")
_LATEX_FRAC_OF_INTS = re.compile(r"\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}")
_PLAIN_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?")


def _check_kind(kind: str) -> None:
    if kind not in ANSWER_KINDS:
        raise ValueError(f"answer kind must be one of {ANSWER_KINDS}, got {kind!r}")


def _braced(text: str, open_index: int) -> str | None:
    """Content of the `{...}` group opening at `text[open_index]`, nested braces matched; None if unbalanced."""
    depth = 0
    for i in range(open_index, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : i]
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed 5`) in `text`; None if absent or unbalanced."""
    start = max(text.rfind(command) for command in _BOX_COMMANDS)
    if start < 0:
        return None
    command = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
    rest = start + len(command)
    if text.startswith(" ", rest):  # `\boxed 5`: the argument runs to the next `$` or line end
        return re.split(r"[$\n]", text[rest + 1 :], maxsplit=1)[0].strip() or None
    if not text.startswith("{", rest):
        return None
    return _braced(text, rest)


def split_gsm8k(text: str) -> tuple[str, str] | None:
    """(text before the last `#### N` line, N as written), or None if there is no such line."""
    markers = list(_GSM8K_MARKER.finditer(text))
    if not markers:
        return None
    return text[: markers[-1].start()].rstrip(), markers[-1].group(1)


def _marked_span(text: str) -> str | None:
    """Content of the answer marker (`#### N`, else the last box); "" if the box is malformed; None if no marker."""
    gsm8k = split_gsm8k(text)
    if gsm8k is not None:
        return gsm8k[1]
    if any(command in text for command in _BOX_COMMANDS):
        return last_boxed(text) or ""
    return None


def _canonical_decimal(number: str) -> str:
    """`18.00` -> `18`, `.50` -> `0.5`, `-0` -> `0`, `1,234` -> `1234`."""
    value = Decimal(number.replace(",", ""))
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def normalize_number(text: str) -> str | None:
    """The last number in `text`, canonicalised (see the module docstring); None if there is none."""
    text = _LATEX_FRAC_OF_INTS.sub(r"\1/\2", text.replace("\u2212", "-").replace("{,}", ","))
    numbers = _NUMBER.findall(text)
    if not numbers:
        return None
    number = numbers[-1]
    if "/" in number:
        numerator, denominator = number.split("/")
        return f"{_canonical_decimal(numerator)}/{denominator}"
    return _canonical_decimal(number)


def _fix_fracs(text: str) -> str:
    """`\\frac1{2}`, `\\frac12` and `\\frac{1}2` -> `\\frac{1}{2}` (single-character arguments, spaces removed)."""
    text = re.sub(r"\\frac([^{\\])\{", r"\\frac{\1}{", text)
    text = re.sub(r"\\frac([^{\\])([^{\\])", r"\\frac{\1}{\2}", text)
    return re.sub(r"\\frac(\{[^{}]*\})([^{\\])", r"\\frac\1{\2}", text)


def _strip_text_commands(text: str) -> str:
    """Drop a trailing `\\text{unit}` after an expression; unwrap any other `\\text{X}` / `\\mbox{X}` to `X`."""
    unit = re.search(r"\\(?:text|mbox)\{[^{}]*\}\s*$", text)
    if unit and text[: unit.start()].strip():
        text = text[: unit.start()]
    return re.sub(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}", r"\1", text)


def normalize_latex(text: str) -> str:
    """The simple LaTeX rewrites listed in the module docstring; the result has no spaces."""
    text = text.replace("\u2212", "-").replace("\n", "")
    for token in ("\\left", "\\right", "\\displaystyle", "\\!", "\\,", "\\;", "\\:", "\\ ", "\\$", "$", "\\%", "%"):
        text = text.replace(token, "")
    text = re.sub(r"\^\s*\{?\s*\\circ\s*\}?", "", text)
    text = _strip_text_commands(text).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = text.replace(" ", "").replace("{,}", ",")
    text = _fix_fracs(re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", text))
    lhs, equals, rhs = text.partition("=")
    if equals and len(lhs) <= 2 and "=" not in rhs:  # "x=5", "k=\frac{1}{2}": keep the value
        text = rhs
    text = text.rstrip(".")
    if re.fullmatch(r"-?\d+/\d+", text):
        numerator, denominator = text.split("/")
        text = f"\\frac{{{numerator}}}{{{denominator}}}"
    if re.search(r"\d", text) and _PLAIN_NUMBER.fullmatch(text):
        text = _canonical_decimal(text)
    return text


def normalize_answer(answer: str, kind: str = "number") -> str:
    """Canonical form of an answer string, for comparison. A "number" answer without a number is kept as text."""
    _check_kind(kind)
    if kind == "latex":
        return normalize_latex(answer)
    number = normalize_number(answer)
    return number if number is not None else " ".join(answer.lower().split())


def extract_answer(text: str, kind: str = "number") -> str | None:
    """The normalised final answer of a generation, or None if it has none (see the module docstring)."""
    _check_kind(kind)
    span = _marked_span(text)
    if span is None:  # no marker, for either kind: the last number of the text
        return normalize_number(text)
    if kind == "number":
        return normalize_number(span)
    return normalize_latex(span) or None


def answers_match(pred: str | None, gold: str, kind: str = "number") -> bool:
    """Whether two final answers are equal after `normalize_answer`; an empty or missing prediction never matches.
    "latex" answers that differ as strings are then compared by math-verify (`0.5` and `\\frac{1}{2}`, `\\sqrt{8}`
    and `2\\sqrt{2}`, reordered sets); "number" answers (GSM8K, arith) stay an exact comparison."""
    if pred is None or not pred.strip():
        return False
    if normalize_answer(pred, kind) == normalize_answer(gold, kind):
        return True
    return kind == "latex" and mathematically_equal(pred, gold)


def mathematically_equal(pred: str, gold: str) -> bool:
    """math-verify's verdict on two LaTeX answers (gold first, as it expects)."""
    try:
        from math_verify import parse, verify
    except ImportError as error:
        raise ImportError("--task math compares answers with math-verify: pip install -e \".[math]\"") from error
    return bool(verify(parse(f"${gold}$"), parse(f"${pred}$")))
