"""`python -m eval` end to end: tiny saved models, stub models that know the answers, the embedded SmolLM2, errors."""

import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from conftest import tiny_model, tiny_text_config, tiny_tokenizer
from eval import runner
from eval.__main__ import main
from eval.runner import LoadedModel, answer_text, build_prompt, tokens_until_eos
from eval.tasks import load_task
from modeling_smollm_trm import Depth
from smollm_trm.gsm8k import LOCAL_DIR as GSM8K_DIR

# Word-level chat template for the tiny tokenizer: words it does not know become <unk>, which is fine for a
# random model; "w10" stands in for the assistant header.
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['content'] }} </s> {% endfor %}{% if add_generation_prompt %}w10 {% endif %}"
)
CHAR_CHAT_TEMPLATE = "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}A:{% endif %}"
CHAR_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "</think>", "<think>"]
CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,?!:;'$%+-*/=()#\\{}\n"
PNG_MAGIC = b"\x89PNG"


def save_tiny(folder: Path, baseline: bool = False) -> Path:
    """A tiny random TRM model (or its plain SmolLM3 backbone) with the tiny tokenizer, saved like a checkpoint."""
    if baseline:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(tiny_text_config())
    else:
        model = tiny_model()
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"trm": save_tiny(root / "tiny-trm"), "baseline": save_tiny(root / "tiny-base", baseline=True)}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------- end to end


def test_sample_two_depths_writes_every_output(tiny_folders, tmp_path):
    out = tmp_path / "out"
    trm, base = str(tiny_folders["trm"]), str(tiny_folders["baseline"])
    results = main(["--model", trm, "--model", base, "--task", "sample", "--n_cycles", "1,2", "--batch_size", "4",
                    "--max_new_tokens", "4", "--output_dir", str(out)])
    expected = {"tiny-trm__T1_N1.jsonl", "tiny-trm__T2_N1.jsonl", "tiny-base.jsonl", "results.json", "results.md",
                "accuracy_vs_depth.png"}
    assert {p.name for p in out.iterdir()} == expected
    assert (out / "accuracy_vs_depth.png").read_bytes().startswith(PNG_MAGIC)
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    runs = results["runs"]
    assert [(r["kind"], r["depth"] and r["depth"]["n_cycles"]) for r in runs] == [("trm", 1), ("trm", 2), ("baseline", None)]
    assert results["versions"]["torch"] == torch.__version__
    sample_size = len(load_task("sample").examples)
    for run in runs:
        records = read_jsonl(out / run["predictions_file"])
        assert len(records) == run["n"] == sample_size
        assert all(1 <= r["tokens_generated"] <= 4 and r["latency_s"] > 0 for r in records)
        assert run["accuracy"] == sum(r["correct"] for r in records) / sample_size
        thinks = [r["prompt"].endswith("<think>") for r in records]
        assert all(thinks) if run["kind"] == "trm" else not any(thinks)
        for record in records:  # what each <think> of the row thought: one entry per <think> it holds
            if run["kind"] != "trm":
                assert "thoughts" not in record
                continue
            held = record["prompt"].count("<think>") + record["generated"].count("<think>")
            assert len(record["thoughts"]) in (held, held - 1), record  # a last generated <think> is not run
            first = record["thoughts"][0]
            assert len(first["tokens"]) == 4 and all(isinstance(t, str) for t in first["tokens"])  # K = 4
            assert len(first["halt_probability"]) == first["supervision_steps"] == 1
    table = (out / "results.md").read_text()
    assert "| tiny-base | baseline | - (no recursion: run once) |" in table.replace(base, "tiny-base")
    # each later run against the first, question by question
    first = read_jsonl(out / runs[0]["predictions_file"])
    assert [c["second"] for c in results["paired"]] == [run["predictions_file"] for run in runs[1:]]
    for comparison, run in zip(results["paired"], runs[1:]):
        other = read_jsonl(out / run["predictions_file"])
        assert comparison["second_only"] == sum(b["correct"] and not a["correct"] for a, b in zip(first, other))
    assert "McNemar" in table
    assert table.count(f"| {trm} | trm | T=") == 2


def test_compiled_thoughts_answer_as_the_eager_model_and_compile_before_the_timed_calls(tiny_folders, tmp_path,
                                                                                          monkeypatch):
    """--compile_thoughts: the TRM model's answers are the eager model's, and the warm-up runs two batch sizes above 1
    (after which torch.compile's graph serves any of them) and 1, so no compiling lands in a timed generate()."""
    from torch._dynamo.utils import counters

    import eval.runner as runner

    sizes, graphs = [], []
    generate = runner.generate_batch

    def recorded(loaded, prompts, *args):
        sizes.append((loaded.compiled, len(prompts)))
        graphs.append(counters["stats"]["unique_graphs"])
        return generate(loaded, prompts, *args)

    monkeypatch.setattr(runner, "generate_batch", recorded)
    args = ["--model", str(tiny_folders["trm"]), "--task", "arith", "--limit", "5", "--depth", "2", "--batch_size", "4",
            "--max_new_tokens", "3"]
    eager = main([*args, "--output_dir", str(tmp_path / "eager")])
    assert sizes[0] == (False, 1)
    sizes.clear()
    graphs.clear()
    compiled = main([*args, "--output_dir", str(tmp_path / "compiled"), "--compile_thoughts", "default"])
    assert sizes == [(True, 4), (True, 3), (True, 1), (True, 4), (True, 1)]  # warm-up, then the 5 questions
    assert graphs[3] > graphs[0] and counters["stats"]["unique_graphs"] == graphs[3], "compiled in a timed call"
    answers = [[r["generated"] for r in read_jsonl(out / "tiny-trm__T2_N1.jsonl")] for out in (tmp_path / "eager",
                                                                                              tmp_path / "compiled")]
    assert answers[0] == answers[1] and compiled["runs"][0]["accuracy"] == eager["runs"][0]["accuracy"]


def test_arith_single_depth_has_no_plot(tiny_folders, tmp_path):
    out = tmp_path / "out"
    results = main(["--model", str(tiny_folders["trm"]), "--task", "arith", "--limit", "3", "--depth", "2", "--seed", "1",
                    "--max_new_tokens", "3", "--output_dir", str(out)])
    assert results["plot"] is None and not (out / "accuracy_vs_depth.png").exists()
    assert results["task"] == {"name": "arith", "kind": "number", "split": "test", "path": None, "limit": 3, "seed": 1,
                               "depth": "2", "n": 3}
    config_depth = results["runs"][0]["depth"]
    assert (config_depth["n_cycles"], config_depth["n_supervision_steps"]) == (2, 1)  # tiny_config's defaults
    assert len(read_jsonl(out / "tiny-trm__T2_N1.jsonl")) == 3


def test_write_card_creates_then_updates_model_index(tiny_folders, tmp_path):
    from huggingface_hub import ModelCard

    folder = tmp_path / "trm"
    save_tiny(folder)
    common = ["--model", str(folder), "--task", "sample", "--max_new_tokens", "2", "--output_dir", str(tmp_path / "o"),
              "--write_card"]
    main(common + ["--n_cycles", "1,3"])
    main(common + ["--n_cycles", "1,2"])
    results = ModelCard.load(folder / "README.md").data.eval_results
    assert sorted(r.metric_config for r in results) == [f"n_cycles={t},n_supervision_steps=1" for t in (1, 2, 3)]
    assert {(r.dataset_name, r.dataset_split, r.metric_type) for r in results} == {("sample", "test", "accuracy")}


# ---------------------------------------------------------------------------------------------------- stub models


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character and decoding without spaces, so that a stub can write any answer."""
    vocab = {token: i for i, token in enumerate(CHAR_SPECIALS + list(CHARS))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        additional_special_tokens=["<think>", "</think>"],
    )
    tokenizer.chat_template = CHAR_CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


class StubModel(torch.nn.Module):
    """Answers each prompt with `reply(question)`, found by decoding the prompt; records its generate() kwargs."""

    def __init__(self, tokenizer, reply):
        super().__init__()
        self.tokenizer, self.reply, self.calls = tokenizer, reply, []
        self.generation_config = SimpleNamespace(eos_token_id=tokenizer.eos_token_id)
        self.config = SimpleNamespace(n_cycles=3, n_supervision_steps=1, n_latent_steps=2, trm_num_layers=2)
        self.device = torch.device("cpu")  # where eval puts the inputs, as on a PreTrainedModel

    def generate(self, input_ids, attention_mask, pad_token_id, **kwargs):
        self.calls.append(kwargs)
        prompts = self.tokenizer.batch_decode(input_ids, skip_special_tokens=True)
        replies = [self.tokenizer.encode(self.reply(p), add_special_tokens=False) + [self.tokenizer.eos_token_id]
                   for p in prompts]
        width = max(map(len, replies))
        new = torch.tensor([row + [pad_token_id] * (width - len(row)) for row in replies])  # (B, new), EOS then pads
        return torch.cat([input_ids, new], dim=1)


def use_stub(monkeypatch, reply, kind: str = "baseline") -> StubModel:
    tokenizer = char_tokenizer()
    stub = StubModel(tokenizer, reply)

    def load_stub(name, gguf_file=None, trust_remote_code=False, compile_thoughts=None):
        return LoadedModel(name=name, model=stub, tokenizer=tokenizer, kind=kind, source=name, gguf_file=None,
                           config=stub.config, num_parameters=0)

    monkeypatch.setattr(runner, "load_model", load_stub)
    return stub


def gold_by_question(task: str) -> dict[str, str]:
    return {ex["question"]: ex["answer"] for ex in load_task(task, limit=20).examples}


@pytest.mark.parametrize("task", ["sample", "arith"])
def test_model_that_knows_the_gold_scores_100_percent(monkeypatch, tmp_path, task):
    gold = gold_by_question(task)
    # Decoy numbers before </think> check that only the text after it is read.
    stub = use_stub(monkeypatch, lambda prompt: f"1 2 3</think>The answer is #### {gold[prompt.removesuffix('A:')]}",
                    kind="trm")
    results = main(["--model", "oracle", "--task", task, "--limit", "20", "--batch_size", "3", "--n_cycles", "1,2",
                    "--output_dir", str(tmp_path)])
    assert [(run["accuracy"], run["n"]) for run in results["runs"]] == [(1.0, len(gold))] * 2
    assert all(run["ci_high"] == pytest.approx(1.0) for run in results["runs"])
    batches = -(-len(gold) // 3)
    assert [call["n_cycles"] for call in stub.calls[1:]] == [1] * batches + [2] * batches  # after the warm-up call
    records = read_jsonl(tmp_path / "oracle__T1_N1.jsonl")
    assert all(r["extracted"] == r["gold"] and r["generated"].endswith("</s>") for r in records)
    assert [r["tokens_generated"] for r in records] == [len(r["generated"]) - len("</think></s>") + 2 for r in records]


def test_math_answers_are_compared_by_mathematical_equality(monkeypatch, tmp_path):
    rows = [{"problem": "Half of one?", "answer": "\\frac{1}{2}"}, {"problem": "Root of eight?", "answer": "2\\sqrt{2}"},
            {"problem": "A third?", "answer": "\\frac{1}{3}"}]
    path = tmp_path / "math.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows))
    replies = {"Half of one?": "0.5", "Root of eight?": "\\sqrt{8}", "A third?": "0.5"}
    use_stub(monkeypatch, lambda prompt: f"</think>\\boxed{{{replies[prompt.removesuffix('A:')]}}}")
    results = main(["--model", "oracle", "--task", "math", "--task_path", str(path), "--batch_size", "3",
                    "--output_dir", str(tmp_path / "out")])
    records = read_jsonl(tmp_path / "out" / results["runs"][0]["predictions_file"])
    assert [r["correct"] for r in records] == [True, True, False]  # 0.5 = 1/2 and sqrt 8 = 2 sqrt 2, as math-verify
    assert results["runs"][0]["accuracy"] == pytest.approx(2 / 3)


def test_model_that_answers_nothing_scores_0_percent(monkeypatch, tmp_path):
    use_stub(monkeypatch, lambda prompt: "")
    results = main(["--model", "mute", "--task", "sample", "--output_dir", str(tmp_path)])
    run = results["runs"][0]
    assert (run["accuracy"], run["ci_low"], run["mean_tokens_generated"]) == (0.0, 0.0, 1.0)  # just the EOS
    assert all(r["extracted"] == "" and not r["correct"] for r in read_jsonl(tmp_path / "mute.jsonl"))


def test_answer_is_read_after_the_last_end_think_without_special_tokens():
    tokenizer = char_tokenizer()
    ids = tokenizer.encode("<think>7</think>x 12</think>#### 42</s><pad>", add_special_tokens=False)
    generated, answer = answer_text(tokenizer, tokens_until_eos(ids, {tokenizer.eos_token_id}))
    assert generated == "<think>7</think>x 12</think>#### 42</s>"
    assert answer == "#### 42"


def test_think_prompt_ends_with_one_think_token():
    tokenizer = char_tokenizer()
    assert build_prompt(tokenizer, "1+1?", think=True) == "<s>1+1?</s>A:<think>"
    assert build_prompt(tokenizer, "1+1?", think=False) == "<s>1+1?</s>A:"
    tokenizer.chat_template = CHAR_CHAT_TEMPLATE + "<think>"  # a template that opens the block itself
    assert build_prompt(tokenizer, "1+1?", think=True).count("<think>") == 1


def test_effective_depth_counts_network_applications():
    config = SimpleNamespace(n_latent_steps=6, trm_num_layers=2)
    assert Depth(n_cycles=3, n_supervision_steps=2).effective(config) == 2 * 3 * 7 * 2


# ---------------------------------------------------------------------------------------------------- errors


def run_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_unknown_task_lists_known_ones(capsys, tiny_folders):
    err = run_error(capsys, ["--model", str(tiny_folders["trm"]), "--task", "aime"])
    assert "'aime'" in err and all(name in err for name in ("gsm8k", "math", "sample", "arith"))


def test_missing_model_folder_is_named(capsys, tmp_path):
    missing = tmp_path / "no-such-model"
    err = run_error(capsys, ["--model", str(missing), "--task", "sample", "--output_dir", str(tmp_path)])
    assert str(missing) in err and "no folder" in err


def test_hub_id_offline_says_the_hub_is_unreachable(capsys, tmp_path):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    err = run_error(capsys, ["--model", "nobody/no-such-model", "--task", "sample", "--output_dir", str(tmp_path)])
    assert "'nobody/no-such-model'" in err and "Hub is unreachable" in err


def test_empty_dataset_is_refused(capsys, tiny_folders, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    err = run_error(capsys, ["--model", str(tiny_folders["trm"]), "--task", "gsm8k", "--task_path", str(empty),
                             "--output_dir", str(tmp_path)])
    assert "no examples" in err and str(empty) in err


def test_sampling_settings_without_do_sample_are_refused(capsys, tiny_folders):
    err = run_error(capsys, ["--model", str(tiny_folders["trm"]), "--task", "sample", "--temperature", "0.7"])
    assert "--do_sample" in err and "0.7" in err


def test_depth_flags_without_a_trm_model_warn(caplog, tiny_folders, tmp_path):
    with caplog.at_level(logging.WARNING, logger="eval"):
        results = main(["--model", str(tiny_folders["baseline"]), "--task", "sample", "--n_cycles", "1,2",
                        "--max_new_tokens", "2", "--output_dir", str(tmp_path)])
    assert len(results["runs"]) == 1 and results["runs"][0]["depth"] is None  # baselines run once
    assert any("no model is a TRM model" in record.getMessage() for record in caplog.records)


# ---------------------------------------------------------------------------------------------------- real model


@pytest.mark.slow
@pytest.mark.skipif(not GSM8K_DIR.is_dir(), reason=f"no local GSM8K copy at {GSM8K_DIR}")
def test_embedded_smollm2_and_its_trm_wrap_run_on_gsm8k(tmp_path):
    from modeling_smollm_trm import SmolLMTRMForCausalLM

    from smollm_trm.model_sources import embedded_smollm2

    folder, gguf_file = embedded_smollm2()
    wrapped = SmolLMTRMForCausalLM.from_base(folder, gguf_file=gguf_file, num_latents=8, trm_hidden_size=64,
                                             trm_num_heads=4)
    wrapped.save_pretrained(tmp_path / "trm")
    wrapped.tokenizer.save_pretrained(tmp_path / "trm")
    del wrapped
    out = tmp_path / "out"
    results = main(["--model", "embedded:smollm2", "--model", str(tmp_path / "trm"), "--task", "gsm8k", "--limit", "4",
                    "--max_new_tokens", "16", "--batch_size", "4", "--output_dir", str(out)])
    assert [(run["kind"], run["n"]) for run in results["runs"]] == [("baseline", 4), ("trm", 4)]
    baseline = read_jsonl(out / "embedded-smollm2.jsonl")
    assert all(0 < r["tokens_generated"] <= 16 for r in baseline)
    assert sum(r["generated"].strip() != "" for r in baseline) >= 3  # a real model writes text
    assert all(r["prompt"].endswith("<|im_start|>assistant\n<think>") for r in read_jsonl(out / "trm__T3_N1.jsonl"))
