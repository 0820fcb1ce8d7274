"""Turn a user's dataset into TRL `SFTTrainer` rows that teach the model to answer after latent thoughts.

Every usable source row becomes one conversational prompt/completion row:

    {"prompt": [..., {"role": "user", "content": QUESTION}],
     "completion": [{"role": "assistant", "content": "<think>" + R + "</think>" + ANSWER}]}

When the model meets `<think>` it inserts K = `num_latents` latent thought positions after it, so R (written
reasoning, empty by default) follows the thoughts. Three source forms are understood:

    qa        {"question": ..., "answer": ..., "reasoning": optional written reasoning}
    messages  {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}; the final assistant turn
              may hold "<think>REASONING</think>ANSWER" (SmolLM3's format); earlier turns are the prompt
    gsm8k     {"question": ..., "answer": "worked solution with <<a*b=c>> annotations\\n#### N"}

Rows that cannot be converted, or that would not fit in `max_length` positions once thoughts are counted, are
reported by index and reason, then skipped or raised on (`on_bad_row`); nothing is truncated silently.

Rows are read by `smollm_trm.rows.load_rows` (the reader eval shares); GSM8K solutions are parsed by
`smollm_trm.gsm8k.split_solution`. A dry run prepares the data as training would and prints what it kept and skipped:

    python -m smollm_trm.sft_data --dataset_name data/ --tokenizer_name HuggingFaceTB/SmolLM3-3B --num_latents 8 \
        --max_length 1024
    python -m smollm_trm.sft_data --dataset_name openai/gsm8k --dataset_config main --reasoning latent+text \
        --tokenizer_name HuggingFaceTB/SmolLM3-3B --num_latents 8 --max_length 1024
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import random
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
from transformers import PreTrainedTokenizerBase

from modeling_smollm_trm import IGNORE_INDEX, THINK_TOKENS, add_think_tokens
from smollm_trm import gsm8k
from smollm_trm.curriculum import (SPARE_COLUMN, STAGE_COLUMN, CurriculumArguments, spare_latent_steps, split_steps,
                                   staged_completion, staged_thought_labels)
from smollm_trm.checkpoints import write_atomically
from smollm_trm.rows import load_rows

logger = logging.getLogger(__name__)

THINK_TOKEN, END_THINK_TOKEN = THINK_TOKENS
THOUGHT_LABELS_COLUMN = "thought_labels"  # the step probe's targets: per <think>, the tokens of the step it replaces
# The one place the completion text is spelled out. No whitespace around the tags: the thoughts are inserted right
# after `<think>`, written reasoning (if any) follows them, and the answer starts right after `</think>`. Reasoning and
# answer are stripped of surrounding whitespace before filling in, so `latent` gives exactly "<think></think>72".
COMPLETION_FORMAT = THINK_TOKEN + "{reasoning}" + END_THINK_TOKEN + "{answer}"

DataFormat = Literal["auto", "qa", "messages", "gsm8k"]
ReasoningMode = Literal["latent", "latent+text", "curriculum"]
ReasoningSteps = Literal["lines", "equations"]
OnBadRow = Literal["skip", "error"]
Rows = list[dict[str, Any]] | datasets.Dataset

# Splits training may evaluate on by default. Never a test split: the eval split picks checkpoints
# (load_best_model_at_end, early stopping), and a benchmark's test split is what `eval` scores afterwards.
VALIDATION_SPLITS = ("validation", "dev")
CHAT_ROLES = ("system", "user", "assistant")
SHOWN_BAD_ROWS = 5  # how many offenders an error message or log summary lists (the report file has them all)
BAD_ROWS_FILE = "bad_rows.jsonl"
FORMAT_SAMPLE_ROWS = 100  # rows looked at to detect the form: the one most of them have wins
ROWS_PER_WORKER = 2000  # below this many rows per worker, converting them in this process is as fast


@dataclass
class SFTDataArguments(CurriculumArguments):
    """Where the data comes from and how it becomes prompt/completion rows (parse with `HfArgumentParser`); the
    curriculum's settings apply with `reasoning='curriculum'`."""

    dataset_name: str = field(
        metadata={"help": "A .json/.jsonl file, a folder of them (train.jsonl, test.jsonl, ...), or a Hub dataset."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub config name, e.g. `main` for gsm8k."})
    data_format: DataFormat = field(default="auto", metadata={"help": "Row form; `auto` detects it per dataset."})
    reasoning: ReasoningMode = field(
        default="latent",
        metadata={"help": "`latent`: answer from the latent thoughts alone; `latent+text`: written reasoning too; "
                          "`curriculum`: written reasoning replaced by latent steps stage by stage."},
    )
    reasoning_steps: ReasoningSteps = field(
        default="lines", metadata={"help": "gsm8k rows: the written reasoning is the solution's `lines`, or its "
                                           "calculator `equations` (<<48/2=24>> -> 48/2=24), one step each."})
    on_bad_row: OnBadRow = field(default="skip", metadata={"help": "Skip (and report) or raise on unusable rows."})
    train_split: str = field(default="train", metadata={"help": "Source split to train on."})
    eval_split: str | None = field(
        default=None, metadata={"help": "Source split evaluated during training (it picks checkpoints). Default: "
                                        "`validation` (or `dev`) when present, else a held-out share of train; a "
                                        "test split is used only when named here, with a warning."})
    eval_fraction: float = field(
        default=0.05, metadata={"help": "Share of train rows held out when the source has no validation split "
                                        "and no --eval_split is named."}
    )
    # Not `seed`: train_sft.py parses these beside SFTConfig, whose `seed` is the training seed.
    split_seed: int = field(default=0, metadata={"help": "Seed of the train/eval split."})

    def __post_init__(self) -> None:
        super().__post_init__()
        choices = {"data_format": DataFormat, "reasoning": ReasoningMode, "reasoning_steps": ReasoningSteps,
                   "on_bad_row": OnBadRow}
        for name, kind in choices.items():
            if getattr(self, name) not in kind.__args__:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {kind.__args__}.")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction={self.eval_fraction} must be in [0, 1).")
        if self.eval_split is not None and self.eval_split == self.train_split:
            raise ValueError(f"eval_split={self.eval_split!r} is the train split: checkpoints would be picked on the "
                             f"rows they trained on. Leave it unset to hold out part of train.")


@dataclass
class PreparedData:
    """Trainer-ready rows plus what was left out: `skipped[split]` lists `(row index in that source split, reason)`.

    With the curriculum every train row is there once per stage (column `curriculum_stage`) and the eval rows are at
    the last stage, as inference asks. With `teacher` rows, each also holds `teacher_input_ids` / `teacher_labels`:
    the same conversation with its written reasoning, for self-distillation. With `probe`, curriculum rows also
    hold `thought_labels`: for each `<think>`, the token ids of the written step its thoughts replace. With
    `curriculum_spare_latent_steps`, train rows hold `spare_latent_steps`: how many of their last `<think>` are
    spare, which the trainer's collator leaves unscored."""

    train: datasets.Dataset
    eval: datasets.Dataset | None
    skipped: dict[str, list[tuple[int, str]]]


class BadRowError(ValueError):
    """A row that cannot become a prompt/completion conversation; the message is the reason reported."""


# ---------------------------------------------------------------------------------------------------- think tokens


def think_token_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """Ids of `<think>` and `</think>`; they must be added tokens, else text would split them into pieces."""
    added = tokenizer.get_added_vocab()
    missing = [token for token in (THINK_TOKEN, END_THINK_TOKEN) if token not in added]
    if missing:
        raise ValueError(
            f"Tokenizer {tokenizer.name_or_path!r} lacks {missing} as single tokens; call "
            "`add_think_tokens(tokenizer)` (modeling_smollm_trm) and resize the model's embeddings first."
        )
    return added[THINK_TOKEN], added[END_THINK_TOKEN]


# ---------------------------------------------------------------------------------------------- rows -> conversation


def detect_format(rows: Rows) -> str:
    """`messages`, `gsm8k` (question/answer whose answers end in a `#### N` line) or `qa`: the form most of the
    first rows have, each row judged on its own (ties go to the form seen first), so a few stray rows cannot flip
    it; how many look otherwise is logged."""
    sample = [rows[index] for index in range(min(len(rows), FORMAT_SAMPLE_ROWS))]
    forms = Counter(_row_form(row) for row in sample)
    known = [form for form, _ in forms.most_common() if form is not None]
    if not known:
        keys = set().union(*(row.keys() for row in sample))
        raise ValueError(
            f"Cannot tell the row form from the fields {sorted(keys)}: expected `messages`, or `question` and "
            "`answer`. Rename the fields or pass data_format explicitly."
        )
    data_format = known[0]
    others = {form or "no known form": count for form, count in forms.items() if form != data_format}
    if others:
        logger.warning("Reading the rows as %s, but %d of the %d sampled rows look like another form (%s); those "
                       "that do not convert are skipped and reported.", data_format, sum(others.values()),
                       len(sample), others)
    return data_format


def _row_form(row: dict[str, Any]) -> str | None:
    # `is not None`, not `in`: a `datasets.Dataset` row holds every column, None where its source row had none.
    if row.get("messages") is not None:
        return "messages"
    if row.get("question") is None and row.get("answer") is None:
        return None
    answer = row.get("answer")
    has_final_line = isinstance(answer, str) and gsm8k.FINAL_LINE.search(answer) is not None
    return "gsm8k" if has_final_line and row.get("reasoning") is None else "qa"


def row_parts(row: dict[str, Any], data_format: str, equations: bool = False) -> tuple[list[dict[str, str]], str, str]:
    """(prompt turns, written reasoning or "", answer) of a source row (`equations`: a gsm8k row's reasoning is its
    calculator equations); raises `BadRowError` with the reason."""
    if data_format == "messages":
        prompt, reasoning, answer = _split_messages(row)
    else:
        prompt = [{"role": "user", "content": _text_field(row, "question")}]
        reasoning, answer = _split_gsm8k(row, equations) if data_format == "gsm8k" else _split_qa(row)
    for where, text in _texts((prompt, reasoning, answer)):
        _reject_lone_surrogates(text, where)
        _reject_think_tags(text, where)
    return prompt, reasoning, answer


def conversation(prompt: list[dict[str, str]], completion: str) -> dict[str, list]:
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": completion}]}


def to_conversation(row: dict[str, Any], data_format: str, reasoning_mode: ReasoningMode,
                    equations: bool = False) -> dict[str, list]:
    """One source row as a prompt/completion conversation (`latent` or `latent+text`; the curriculum's stages are
    `training_rows`'); raises `BadRowError` with the reason it cannot be."""
    return _single_conversation(row_parts(row, data_format, equations), reasoning_mode)


def _single_conversation(parts: tuple[list[dict[str, str]], str, str], reasoning_mode: ReasoningMode) -> dict:
    prompt, reasoning, answer = parts
    written = "" if reasoning_mode == "latent" else reasoning
    return conversation(prompt, COMPLETION_FORMAT.format(reasoning=written, answer=answer))


def reasoning_steps(reasoning: str) -> list[str]:
    """The written steps of a row that the curriculum or the teacher needs; a row without any is unusable."""
    steps = split_steps(reasoning)
    if not steps:
        raise BadRowError("no written reasoning to split into steps (the curriculum and the distillation teacher "
                          "need it)")
    return steps


def training_rows(parts: tuple[list[dict[str, str]], str, str], args: SFTDataArguments, final_stage_only: bool
                  ) -> list[dict[str, Any]]:
    """The conversations a source row (its `row_parts`) trains on: one, or with the curriculum one per stage (the
    last stage only when `final_stage_only`, as eval rows are), train rows with their spare latent steps."""
    if args.reasoning != "curriculum":
        return [_single_conversation(parts, args.reasoning)]
    prompt, reasoning, answer = parts
    steps = reasoning_steps(reasoning)
    stages = [args.curriculum_stages] if final_stage_only else range(args.curriculum_stages + 1)
    spares = 0 if final_stage_only else args.curriculum_spare_latent_steps  # eval rows: as a prompt asks
    rows = []
    for stage in stages:
        most = spares if stage == args.curriculum_stages else 0
        spare = spare_latent_steps(len(steps), stage, most, repr(prompt))
        row = {**conversation(prompt, staged_completion(steps, answer, stage, args.curriculum_pad_latent_steps, spare)),
               STAGE_COLUMN: stage}
        rows.append({**row, SPARE_COLUMN: spare} if spares else row)
    return rows


def teacher_tokens(tokenizer: PreTrainedTokenizerBase, parts: tuple[list[dict[str, str]], str, str],
                   max_length: int) -> dict[str, list[int]]:
    """The distillation teacher's row (from `row_parts`): the conversation with its written reasoning, tokenized as
    TRL does, labels on the completion only. It runs without thoughts, so its length is its tokens."""
    prompt, reasoning, answer = parts
    written = "\n".join(reasoning_steps(reasoning))
    teacher = conversation(prompt, COMPLETION_FORMAT.format(reasoning=written, answer=answer))
    ids = _chat_ids(tokenizer, teacher["prompt"] + teacher["completion"])
    if len(ids) > max_length:
        raise BadRowError(f"the teacher's written reasoning takes {len(ids)} tokens, more than max_length={max_length}")
    prompt_length = len(_chat_ids(tokenizer, prompt, add_generation_prompt=True))
    return {"teacher_input_ids": ids, "teacher_labels": [IGNORE_INDEX] * prompt_length + ids[prompt_length:]}


def step_token_ids(tokenizer: PreTrainedTokenizerBase, parts: tuple[list[dict[str, str]], str, str],
                   num_latents: int, fill_id: int | None = None) -> list[list[int]]:
    """The token ids of each written step of a row (from `row_parts`), the step probe's targets, each filled up to
    the K thoughts with `fill_id` when given (`curriculum_step_fill`); a step longer than the K thoughts that must
    decode it is a bad row."""
    steps = reasoning_steps(parts[1])
    step_ids = [tokenizer(step, add_special_tokens=False)["input_ids"] for step in steps]
    for number, (step, ids) in enumerate(zip(steps, step_ids), start=1):
        if len(ids) > num_latents:
            raise BadRowError(f"step {number} ({step!r:.60}) takes {len(ids)} tokens, more than the "
                              f"num_latents={num_latents} thoughts that decode it for the step probe")
    if fill_id is None:
        return step_ids
    return [ids + [fill_id] * (num_latents - len(ids)) for ids in step_ids]


def step_fill_id(tokenizer: PreTrainedTokenizerBase, fill: str | None) -> int | None:
    """The token id of `curriculum_step_fill`, which must be exactly one token."""
    if fill is None:
        return None
    ids = tokenizer(fill, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"curriculum_step_fill={fill!r} must be exactly one token of the tokenizer; it is {ids}.")
    return ids[0]


def _text_field(row: dict[str, Any], name: str) -> str:
    """A required non-empty text field; JSON numbers are accepted for answers like `72` or `2.5`."""
    value = row.get(name)
    if value is None:
        raise BadRowError(f"missing {name!r} (fields: {sorted(row)})")
    if isinstance(value, float):
        value = _float_text(value, name)
    elif isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise BadRowError(f"{name!r} is a {type(value).__name__}, expected a string")
    if not value.strip():
        raise BadRowError(f"empty {name!r}")
    return value.strip()


def _float_text(value: float, name: str) -> str:
    # str() would train NaN as "nan" and 1e20 as "1e+20", text the data's author never wrote.
    text = str(value)
    if not math.isfinite(value) or "e" in text:
        raise BadRowError(f"{name!r} is the JSON number {text}, which has no plain decimal text; write {name!r} as a "
                          "string, as it should be trained on")
    return text


def _split_qa(row: dict[str, Any]) -> tuple[str, str]:
    reasoning = row.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, str):
        raise BadRowError(f"'reasoning' is a {type(reasoning).__name__}, expected a string")
    return (reasoning or "").strip(), _text_field(row, "answer")


def _split_gsm8k(row: dict[str, Any], equations: bool = False) -> tuple[str, str]:
    """The worked solution without `<<a*b=c>>` annotations (or only their equations) becomes the reasoning, N of
    `#### N` the answer."""
    solution = _text_field(row, "answer")
    try:
        return gsm8k.split_solution(solution, equations)
    except ValueError as err:
        raise BadRowError(f"gsm8k 'answer': {err}") from None


def _split_messages(row: dict[str, Any]) -> tuple[list[dict[str, str]], str, str]:
    """Earlier turns are the prompt; the final assistant turn holds `<think>REASONING</think>ANSWER` or `ANSWER`."""
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRowError(f"'messages' is {type(messages).__name__}, expected a non-empty list of turns")
    for position, message in enumerate(messages):
        is_turn = isinstance(message, dict) and message.get("role") in CHAT_ROLES
        if not (is_turn and isinstance(message.get("content"), str)):
            expected = f"{{'role': one of {CHAT_ROLES}, 'content': str}}"
            raise BadRowError(f"turn {position} is not {expected}: {message!r:.80}")
    if messages[-1]["role"] != "assistant":
        raise BadRowError(f"no final assistant turn (the last turn is {messages[-1]['role']!r})")
    if len(messages) < 2 or messages[-2]["role"] != "user" or not messages[-2]["content"].strip():
        raise BadRowError("the final assistant turn must follow a non-empty user turn")
    reasoning, answer = _split_think_block(messages[-1]["content"])
    prompt = [{"role": message["role"], "content": message["content"]} for message in messages[:-1]]
    return prompt, reasoning, answer


def _split_think_block(content: str) -> tuple[str, str]:
    before, opened, rest = content.partition(THINK_TOKEN)
    if not opened:
        reasoning, answer = "", content
    elif before.strip():
        raise BadRowError(f"final assistant turn has text before {THINK_TOKEN!r}: {before.strip()!r:.80}")
    else:
        reasoning, closed, answer = rest.partition(END_THINK_TOKEN)
        if not closed:
            raise BadRowError(f"final assistant turn opens {THINK_TOKEN!r} but never closes it")
    if not answer.strip():
        raise BadRowError("final assistant turn has no answer")
    return reasoning.strip(), answer.strip()


def _texts(parts: tuple[list[dict[str, str]], str, str]) -> list[tuple[str, str]]:
    """(where, text) of every text of a row's parts that the model reads: the prompt's turns, reasoning, answer."""
    prompt, reasoning, answer = parts
    return [(f"{message['role']} turn", message["content"]) for message in prompt] + [
        ("reasoning", reasoning), ("answer", answer)]


def _reject_lone_surrogates(text: str, where: str) -> None:
    """JSON may escape half a UTF-16 pair ("\\ud800"); the tokenizer would fail on it later without the row index."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise BadRowError(f"{where} contains a lone surrogate {text[err.start]!r} at character {err.start}, which is "
                          "not valid Unicode; fix the text (a JSON \\uXXXX escape that lost its pair?)") from None


def _reject_think_tags(text: str, where: str) -> None:
    """A stray tag would be tokenized as the thought trigger and insert latents where none belong."""
    for tag in (THINK_TOKEN, END_THINK_TOKEN):
        if tag in text:
            raise BadRowError(f"{where} contains {tag!r}, which only the completion's thought block may hold")


def special_tokens(tokenizer: PreTrainedTokenizerBase) -> tuple[str, ...]:
    """Every special token of `tokenizer` (its named ones and its added special ones), as text."""
    added = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    return tuple(sorted(token for token in added.union(tokenizer.all_special_tokens) if token))


def reject_special_tokens(parts: tuple[list[dict[str, str]], str, str], tokens: tuple[str, ...]) -> None:
    """Text holding a special token (`<|im_end|><|im_start|>assistant`) would be parsed as one by the chat template
    and forge a turn; `tokens` is `special_tokens(tokenizer)`."""
    for where, text in _texts(parts):
        found = sorted((token for token in tokens if token in text), key=text.index)
        if found:
            raise BadRowError(f"{where} contains the tokenizer's special token(s) {found} as text, which the chat "
                              "template would read as control tokens (a forged turn); remove them")


# ----------------------------------------------------------------------------------------------------------- length


def _chat_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], **kwargs: Any) -> list[int]:
    # The call TRL 1.16 makes in `SFTTrainer._prepare_dataset` (via `trl.data_utils._tokenize`), so our count
    # matches what it trains on: the default chat template, tokenize=True, return_dict=True.
    return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"]


def sequence_length(
    tokenizer: PreTrainedTokenizerBase, conversation: dict[str, list], num_latents: int, think_id: int
) -> int:
    """Positions the model runs over: TRL's ids for prompt + completion plus K thoughts per `<think>` token."""
    ids = _chat_ids(tokenizer, conversation["prompt"] + conversation["completion"])
    return len(ids) + num_latents * ids.count(think_id)


def _check_length(
    tokenizer: PreTrainedTokenizerBase, conversation: dict[str, list], num_latents: int, think_id: int, max_length: int
) -> None:
    length = sequence_length(tokenizer, conversation, num_latents, think_id)
    if length > max_length:
        raise BadRowError(
            f"{length} positions ({num_latents} thoughts per {THINK_TOKEN} counted) exceed max_length={max_length}"
        )


def check_chat_template(tokenizer: PreTrainedTokenizerBase, think_id: int) -> None:
    """Fail early if the chat template drops `<think>` from the assistant turn: the model would never get thoughts.
    The turn's `<think>` is the generation prompt's last token (a thinking template) or in the completion."""
    prompt = [{"role": "user", "content": "What is 1 + 1?"}]
    completion = [{"role": "assistant", "content": COMPLETION_FORMAT.format(reasoning="", answer="2")}]
    prompt_ids = _chat_ids(tokenizer, prompt, add_generation_prompt=True)
    full_ids = _chat_ids(tokenizer, prompt + completion)
    if full_ids[: len(prompt_ids)] != prompt_ids:
        logger.warning("The prompt rendered alone is not a prefix of prompt + completion; TRL then starts the "
                       "completion loss where they diverge.")
    opened = prompt_ids[-1:] == [think_id]
    if not opened and think_id not in full_ids[len(prompt_ids):]:
        raise ValueError(
            f"The chat template of {tokenizer.name_or_path!r} drops {THINK_TOKEN!r} from the assistant turn (it "
            f"renders {tokenizer.decode(full_ids[len(prompt_ids):])!r}); use a template that keeps it verbatim."
        )


# ------------------------------------------------------------------------------------------------------ preparation


@dataclass(frozen=True)
class RowConversion:
    """How one source row becomes its training rows: what `prepare_sft_data` applies to every row of a part."""

    args: SFTDataArguments
    tokenizer: PreTrainedTokenizerBase
    data_format: str
    control_tokens: tuple[str, ...]
    num_latents: int
    think_id: int
    max_length: int
    teacher: bool  # add the distillation teacher's tokens
    probe: bool  # add the step probe's thought_labels
    final_stage_only: bool  # eval rows: the curriculum's last stage alone
    step_fill_id: int | None = None  # curriculum_step_fill's token, labelling the thoughts after a step's own

    def __call__(self, row: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
        """(the row's conversations, None), or ([], why it is unusable)."""
        args = self.args
        try:
            parts = row_parts(row, self.data_format, args.reasoning_steps == "equations")
            reject_special_tokens(parts, self.control_tokens)
            variants = training_rows(parts, args, self.final_stage_only)
            for variant in variants:
                _check_length(self.tokenizer, variant, self.num_latents, self.think_id, self.max_length)
            if self.teacher:
                extra = teacher_tokens(self.tokenizer, parts, self.max_length)
                variants = [{**variant, **extra} for variant in variants]
            if self.probe:
                step_ids = step_token_ids(self.tokenizer, parts, self.num_latents, self.step_fill_id)
                # A padding or spare <think> with the fill: an empty step, so that spare steps leave the answer alone.
                empty = None if self.step_fill_id is None else [self.step_fill_id] * self.num_latents
                variants = [{**variant, THOUGHT_LABELS_COLUMN: staged_thought_labels(
                    step_ids, variant[STAGE_COLUMN], args.curriculum_pad_latent_steps, empty,
                    variant.get(SPARE_COLUMN, 0))} for variant in variants]
        except BadRowError as err:
            return [], str(err)
        return variants, None


_worker_conversion: RowConversion | None = None  # a worker process's, set once by its initializer


def _set_worker_conversion(conversion: RowConversion) -> None:
    global _worker_conversion
    _worker_conversion = conversion


def _convert_in_worker(row: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    return _worker_conversion(row)


def converted_rows(conversion: RowConversion, rows: list[dict[str, Any]], num_proc: int | None
                   ) -> list[tuple[list[dict[str, Any]], str | None]]:
    """`conversion` of every row, in order; over `num_proc` forked processes when there are enough rows to pay for
    them (rendering the chat template for every stage of every row is most of the preparation: about a minute for
    the depth task's 50k rows in one process)."""
    workers = min(num_proc or 1, len(rows) // ROWS_PER_WORKER)
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return [conversion(row) for row in rows]
    # Forked, the workers get the conversion (tokenizer included) once, from the initializer, not with every chunk.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                             initializer=_set_worker_conversion, initargs=(conversion,)) as pool:
        return list(pool.map(_convert_in_worker, rows, chunksize=max(1, len(rows) // (workers * 4))))


def prepare_sft_data(
    args: SFTDataArguments, tokenizer: PreTrainedTokenizerBase, num_latents: int, max_length: int,
    teacher: bool = False, probe: bool = False, report_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
) -> PreparedData:
    """Load, convert and validate `args.dataset_name` into train (and eval) prompt/completion datasets; `teacher`
    adds the distillation teacher's tokens to the train rows, `probe` the step probe's `thought_labels` to the
    curriculum's rows. Every unusable row (index, reason) is written to `report_dir/bad_rows.jsonl` when given.
    `num_proc`: processes that convert the rows of a large dataset (TRL's `dataset_num_proc`)."""
    if probe and args.reasoning != "curriculum":
        raise ValueError(f"The step probe decodes latent steps, which only --reasoning curriculum has (got "
                         f"{args.reasoning!r}).")
    if args.curriculum_step_fill is not None and not probe:
        raise ValueError("curriculum_step_fill labels the thoughts after each latent step for the step probe: give "
                         "--probe_loss_weight or --thought_teacher_forcing above 0 too.")
    fill_id = step_fill_id(tokenizer, args.curriculum_step_fill)
    think_id, _ = think_token_ids(tokenizer)
    check_chat_template(tokenizer, think_id)
    splits = load_rows(args.dataset_name, None, args.dataset_config)
    if args.train_split not in splits:
        raise ValueError(f"{args.dataset_name!r} has no split {args.train_split!r}; it has {sorted(splits)}.")
    if len(splits[args.train_split]) == 0:
        raise ValueError(f"No usable row: split {args.train_split!r} of {args.dataset_name!r} is empty.")
    data_format = detect_format(splits[args.train_split]) if args.data_format == "auto" else args.data_format
    logger.info("Reading %r as %s rows (reasoning=%s).", args.dataset_name, data_format, args.reasoning)
    control_tokens = special_tokens(tokenizer)
    prepared: dict[str, datasets.Dataset] = {}
    skipped: dict[str, list[tuple[int, str]]] = {}
    reported: list[dict[str, Any]] = []
    for part, (split_name, rows, indices) in _plan_parts(splits, args).items():
        conversion = RowConversion(args, tokenizer, data_format, control_tokens, num_latents, think_id, max_length,
                                   teacher=teacher and part == "train", probe=probe, final_stage_only=part == "eval",
                                   step_fill_id=fill_id)
        conversations, bad = [], []
        for index, (variants, reason) in zip(indices, converted_rows(conversion, [rows[i] for i in indices],
                                                                     num_proc)):
            if reason is not None:
                bad.append((index, reason))
            conversations += variants
        where = f"{part} rows of split {split_name!r} of {args.dataset_name!r}"
        reported += [{"part": part, "split": split_name, "index": index, "reason": reason} for index, reason in bad]
        report = _write_bad_rows(report_dir, reported) if bad else None
        _report_bad_rows(where, len(indices), len(conversations), bad, args.on_bad_row, report)
        skipped[split_name] = sorted(skipped.get(split_name, []) + bad)
        prepared[part] = datasets.Dataset.from_list(conversations)
    if args.reasoning == "latent+text":
        _warn_missing_reasoning(prepared["train"])
    return PreparedData(train=prepared["train"], eval=prepared.get("eval"), skipped=skipped)


def _plan_parts(splits: dict[str, Rows], args: SFTDataArguments) -> dict[str, tuple[str, Rows, list[int]]]:
    """Source split and row indices behind train and eval: `eval_split` when named, else a validation split when
    present, else a seeded held-out share of train's distinct rows (duplicates stay together), chosen before any row
    is converted, so the eval rows do not change with max_length or K."""
    train_rows = splits[args.train_split]
    plan = {"train": (args.train_split, train_rows, list(range(len(train_rows))))}
    eval_name = args.eval_split or next(
        (name for name in VALIDATION_SPLITS if name in splits and name != args.train_split), None)
    if args.eval_split is not None:
        if args.eval_split not in splits:
            raise ValueError(f"--eval_split {args.eval_split!r}: {args.dataset_name!r} has no such split; it has "
                             f"{sorted(splits)}.")
        if "test" in args.eval_split.lower():
            logger.warning("--eval_split %r: checkpoints are selected on a test split. If `eval` then scores that "
                           "split, its score is optimistic; leave --eval_split unset to hold out part of train.",
                           args.eval_split)
    if eval_name is not None:
        plan["eval"] = (eval_name, splits[eval_name], list(range(len(splits[eval_name]))))
    elif args.eval_fraction > 0:
        keys = [row_key(train_rows[index]) for index in range(len(train_rows))]
        first_seen, repeats = {}, []  # (row, the earlier row it repeats)
        for index, key in enumerate(keys):
            first = first_seen.setdefault(key, index)
            if first != index:
                repeats.append((index, first))
        if repeats:
            shown = ", ".join(f"{index} (= {first})" for index, first in repeats[:SHOWN_BAD_ROWS])
            logger.warning("%d of the %d rows of %r repeat an earlier row (0-based: %s%s); each is held out with "
                           "its copies or not at all.", len(repeats), len(keys), args.train_split, shown,
                           ", ..." if len(repeats) > SHOWN_BAD_ROWS else "")
        train_indices, eval_indices = split_indices(keys, args.eval_fraction, args.split_seed)
        plan["train"] = (args.train_split, train_rows, train_indices)
        plan["eval"] = (args.train_split, train_rows, eval_indices)
    return plan


def split_indices(rows: int | list, eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Sorted train and eval row indices; the same arguments always give the same split. `rows` is each row's content
    (any hashable, `row_key`), so that identical rows land on the same side, or a count of distinct rows."""
    keys = list(range(rows)) if isinstance(rows, int) else list(rows)
    distinct = list(dict.fromkeys(keys))  # first occurrence order: with no duplicates, the count's split
    num_eval = max(1, round(len(distinct) * eval_fraction))
    if num_eval >= len(distinct):
        raise ValueError(f"eval_fraction={eval_fraction} of {len(distinct)} distinct rows leaves no training row; "
                         "lower it or set it to 0.")
    order = list(range(len(distinct)))
    random.Random(seed).shuffle(order)
    held_out = {distinct[i] for i in order[:num_eval]}
    return ([i for i, key in enumerate(keys) if key not in held_out],
            [i for i, key in enumerate(keys) if key in held_out])


def row_key(row: dict[str, Any]) -> str:
    """A row's content as one string: rows with equal keys are duplicates."""
    return json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)


def _write_bad_rows(report_dir: str | os.PathLike | None, rows: list[dict[str, Any]]) -> Path | None:
    """Every unusable row so far, one JSON object per line, in `report_dir/bad_rows.jsonl` (None: no folder)."""
    if report_dir is None:
        return None
    path = Path(report_dir) / BAD_ROWS_FILE
    write_atomically(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


def _report_bad_rows(
    where: str, num_rows: int, num_good: int, bad: list[tuple[int, str]], on_bad_row: OnBadRow,
    report: Path | None = None,
) -> None:
    """Raise when nothing is usable or when `on_bad_row='error'` meets a bad row; else log what is skipped. The
    messages show the first few and name `report`, the file that lists them all."""
    shown = "; ".join(f"row {index}: {reason}" for index, reason in bad[:SHOWN_BAD_ROWS])
    if report is not None:
        shown += f" (every one is listed in {report})"
    if num_good == 0:
        raise ValueError(f"No usable row among the {num_rows} {where}. First problems: {shown or 'none, it is empty'}.")
    if bad and on_bad_row == "error":
        raise ValueError(
            f"{len(bad)} of the {num_rows} {where} cannot be used (on_bad_row='error'): {shown}. Fix them, or pass "
            "on_bad_row='skip' to leave them out."
        )
    if bad:
        logger.warning("Skipped %d of the %d %s: %s.", len(bad), num_rows, where, shown)


def _warn_missing_reasoning(train: datasets.Dataset) -> None:
    empty_block = COMPLETION_FORMAT.format(reasoning="", answer="")
    num_latent_only = sum(row[0]["content"].startswith(empty_block) for row in train["completion"])
    if num_latent_only:
        logger.warning("reasoning='latent+text', but %d of %d train rows have no written reasoning; they train as "
                       "latent-only rows.", num_latent_only, len(train))


# ------------------------------------------------------------------------------------------------------ command line


@dataclass
class PreviewArguments:
    """What the dry run needs besides the data: the tokenizer TRL will template with, and the model's sizes."""

    tokenizer_name: str = field(metadata={"help": "Tokenizer (Hub name or folder) whose chat template TRL applies."})
    num_latents: int = field(metadata={"help": "Latent thought positions the model inserts after each <think>."})
    max_length: int = field(metadata={"help": "Longest sequence in positions, thoughts included."})
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file inside tokenizer_name to read it from."})


def make_parser() -> "HfArgumentParser":
    from transformers import HfArgumentParser

    return HfArgumentParser((SFTDataArguments, PreviewArguments))


def main(argv: list[str] | None = None) -> None:
    """Dry run: prepare the data as training would (short names included), print the counts, the first row and
    what was skipped."""
    import tempfile

    from transformers import AutoTokenizer

    from smollm_trm.named_datasets import resolve_dataset

    data_args, preview = make_parser().parse_args_into_dataclasses(args=argv)
    tokenizer = AutoTokenizer.from_pretrained(preview.tokenizer_name, gguf_file=preview.gguf_file)
    print(f"added to the tokenizer: {add_think_tokens(tokenizer)}")
    with tempfile.TemporaryDirectory() as scratch:  # where `arith` writes its generated splits
        prepared = prepare_sft_data(resolve_dataset(data_args, scratch), tokenizer, preview.num_latents,
                                    preview.max_length)
    print(f"train rows: {len(prepared.train)}, eval rows: {len(prepared.eval) if prepared.eval else 0}")
    print(f"first train row: {json.dumps(prepared.train[0], ensure_ascii=False)}")
    for split_name, bad in prepared.skipped.items():
        print(f"skipped in {split_name!r}: {len(bad)}")
        for index, reason in bad:
            print(f"  row {index}: {reason}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
