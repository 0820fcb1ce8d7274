"""train_sft: training on each data form, the loss the trainer optimises, resume (also after SIGKILL), early stopping,
EMA, Hub-ready folders that load in a fresh process, the model card, pushing, bad data, and the quickstart.

Offline, CPU: a tiny random SmolLM3 backbone with a word-level tokenizer ("w7" is id 7) saved to a folder, so the
script wraps it with `from_base` and adds `<think>`/`</think>` (ids 96, 97) as it would for a real backbone.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import EOS, PAD_ID, ROOT, VOCAB, run_isolated, tiny_text_config
from safetensors.torch import load_file

import train_sft
from smollm_trm.arguments import make_parser
from smollm_trm.checkpoints import last_complete_checkpoint, resume_point, write_manifest
from smollm_trm.export import export_model, save_final
from smollm_trm.hub import push_folder
from smollm_trm.trainer import TRMSFTTrainer
from smollm_trm.training import build_trainer

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}assistant {% endif %}"
)
TINY_TRM = ["--num_latents", "4", "--trm_hidden_size", "16", "--trm_num_heads", "2", "--n_latent_steps", "2",
            "--n_cycles", "2"]
# One thread: these tiny models run many small ops, and two spinning OpenMP threads on a busy 2-core machine make a
# step ~100x slower.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    """A plain tiny SmolLM3 causal LM and a tokenizer without think tokens, saved like a Hub backbone."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, SmolLM3ForCausalLM

    folder = tmp_path_factory.mktemp("backbone")
    torch.manual_seed(0)
    SmolLM3ForCausalLM(tiny_text_config()).save_pretrained(folder)
    specials = {"<pad>": PAD_ID, "<s>": 1, "</s>": EOS, "<unk>": 3}
    vocab = {**{f"w{i}": i for i in range(VOCAB) if i not in specials.values()}, **specials}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


def qa_rows(count: int, offset: int = 10) -> list[dict]:
    """Questions `wA wB` whose answer is `wC`, C a fixed function of A and B: learnable by a tiny model."""
    return [{"question": f"w{offset + i} w{offset + i + 1}", "answer": f"w{40 + i % 5}"} for i in range(count)]


def write_data(folder: Path, form: str, count: int = 12) -> Path:
    rows = qa_rows(count)
    if form == "messages":
        rows = [{"messages": [{"role": "user", "content": r["question"]},
                              {"role": "assistant", "content": r["answer"]}]} for r in rows]
    elif form == "gsm8k":
        rows = [{"question": r["question"], "answer": f"w60 w61\n#### {r['answer']}"} for r in rows]
    path = folder / f"{form}.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def cli(backbone: Path, data: Path, output_dir: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", str(backbone), "--dataset_name", str(data), "--output_dir", str(output_dir),
            "--max_length", "64", "--per_device_train_batch_size", "4", "--learning_rate", "1e-2",
            "--max_steps", "6", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
            "--bf16", "false", "--eval_fraction", "0.25", "--num_demo_answers", "0", "--dataloader_pin_memory",
            "false", "--use_peft", "--lora_r", "4", "--lora_alpha", "8", *TINY_TRM, *extra]


def trainer_for(args: list[str]):
    return build_trainer(*make_parser().parse_args_and_config(args))


def first_batch(trainer: TRMSFTTrainer) -> dict:
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def batch_loss(trainer: TRMSFTTrainer, batch: dict) -> float:
    trainer.model.eval()
    with torch.no_grad():
        return trainer.model(**batch).loss.item()


# ---------------------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("form", ["qa", "messages", "gsm8k"])
def test_training_lowers_the_loss_and_trains_exactly_the_trainable_weights(backbone, tmp_path, form):
    trainer, data = trainer_for(cli(backbone, write_data(tmp_path, form), tmp_path / "out", "--max_steps", "12"))
    assert len(data.train) == 9 and len(data.eval) == 3
    batch = first_batch(trainer)
    loss_before = batch_loss(trainer, batch)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    assert batch_loss(trainer, batch) < loss_before - 0.5
    trained = {name: not torch.equal(p, before[name]) for name, p in trainer.model.named_parameters()}
    trainable = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert all(trained[name] for name in trainable if "lora_B" in name or ".thoughts.modules_to_save." in name)
    assert any(".thoughts.modules_to_save." in name for name in trainable), "the TRM is not trainable"
    assert trained["base_model.model.model.language_model.embed_tokens.token_adapter.trainable_tokens_delta.default"], \
        "the new <think>/</think> rows did not train"
    assert not any(trained[name] for name in set(trained) - trainable), "a frozen weight changed"


def test_trainer_optimises_the_models_own_loss_with_thoughts(backbone, tmp_path):
    torch.backends.cuda.enable_cudnn_sdp(True)
    try:
        trainer, _ = trainer_for(cli(backbone, write_data(tmp_path, "qa"), tmp_path / "out"))
        # cuDNN's attention cost a profiled step's host most of its time (smollm_trm.attention)
        assert not torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(True)  # torch's default, for the tests that follow
    model = trainer.model.eval()
    batch = first_batch(trainer)
    assert "forward" not in model.get_base_model().__dict__, "TRL's fused LM head (backbone only) is still patched"
    with torch.no_grad():
        trainer_loss = trainer.compute_loss(model, dict(batch))
        own = model(**batch)
        # The thoughts are in that loss: changing the TRM's output changes it.
        model.get_base_model().model.thoughts.modules_to_save["default"].out_proj.weight.add_(torch.randn_like(model.get_base_model().model.thoughts.modules_to_save["default"].out_proj.weight))
        perturbed = trainer.compute_loss(model, dict(batch))
    assert own.halt_loss is not None and own.thought_norm is not None
    torch.testing.assert_close(trainer_loss, own.loss, rtol=0, atol=0)
    assert abs(perturbed.item() - trainer_loss.item()) > 1e-4


def test_compile_thoughts_compiles_the_trm_network_that_trains(backbone, tmp_path, caplog):
    """--compile_thoughts reaches the thought module LoRA trains (its modules_to_save copy); it changes no run setting
    (a run may resume with or without it), and a model without a TRM network warns instead."""
    from modeling_smollm_trm import TinyRecursiveNetwork
    from smollm_trm.checkpoints import run_settings

    args = cli(backbone, write_data(tmp_path, "qa"), tmp_path / "out")
    trainer, _ = trainer_for([*args, "--compile_thoughts", "reduce-overhead"])
    trained = trainer.model.get_base_model().model.thoughts.modules_to_save["default"].net
    assert isinstance(trained, TinyRecursiveNetwork) and trained.compiled is not None
    parser = make_parser()
    assert run_settings(*parser.parse_args_and_config(args)) == run_settings(
        *parser.parse_args_and_config([*args, "--compile_thoughts", "default"]))
    with caplog.at_level("WARNING"):
        trainer_for([*args, "--thought_mode", "pause", "--compile_thoughts", "default"])
    assert "no TRM network to compile" in caplog.text


def test_trm_metrics_are_logged_beside_trls(backbone, tmp_path):
    trainer, _ = trainer_for(cli(backbone, write_data(tmp_path, "qa"), tmp_path / "out", "--max_steps", "2",
                                 "--eval_strategy", "steps", "--eval_steps", "2"))
    trainer.train()
    train_logs = next(log for log in trainer.state.log_history if "loss" in log)
    eval_logs = next(log for log in trainer.state.log_history if "eval_loss" in log)
    for name in ("lm_loss", "halt_loss", "halt_probability", "supervision_steps", "thought_norm", "thought_scale",
                 "mean_token_accuracy", "answer_token_accuracy", "num_tokens"):
        assert name in train_logs and f"eval_{name}" in eval_logs, name
    assert 0.0 <= train_logs["answer_token_accuracy"] <= 1.0
    timed = [log["seconds_per_batch"] for log in trainer.state.log_history if "seconds_per_batch" in log]
    assert timed and all(seconds > 0 for seconds in timed), "the second batch on shows the speed"


def test_packing_and_padding_free_are_refused(backbone, tmp_path):
    for flag in ("--packing", "--padding_free"):
        with pytest.raises(ValueError, match="padded rows"):
            trainer_for(cli(backbone, write_data(tmp_path, "qa"), tmp_path / "out", flag, "true"))


def test_unknown_yaml_key_fails_and_flags_override_the_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset_name: sample\nnum_latentz: 4\n")
    with pytest.raises(ValueError, match="num_latentz"):
        make_parser().parse_args_and_config(["--config", str(bad)])
    config = str(ROOT / "configs/quickstart.yaml")
    data, training, model, trm = make_parser().parse_args_and_config(["--config", config, "--num_latents", "8"])
    assert (data.dataset_name, trm.num_latents, trm.trm_hidden_size, model.use_peft) == ("sample", 8, 128, True)
    assert training.activation_checkpointing is False and training.gradient_checkpointing is False


# ------------------------------------------------------------------------------------------- resume, EMA, stopping


def trained_state(trainer) -> dict:
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}


def test_every_config_setting_is_a_flag_with_the_configs_own_description():
    from configuration_smollm_trm import SmolLMTRMConfig

    declared = set(SmolLMTRMConfig.__annotations__) - {"text_config", "tie_word_embeddings"}  # backbone's / derived
    assert set(SmolLMTRMConfig.thought_settings()) == declared
    actions = {action.dest: action for action in train_sft.make_parser()._actions}
    for name in declared:
        assert name in actions, f"--{name} is not a train_sft.py flag"
        assert actions[name].help and actions[name].default is None, name
    assert tuple(actions["thought_mode"].choices) == ("trm", "pause", "none")
    settings = {"think_token_id": "7", "trm_rms_norm_eps": "1e-6", "thought_window": "slide", "n_cycles": "4"}
    flags = [part for name, value in settings.items() for part in (f"--{name}", value)]
    trm = train_sft.make_parser().parse_args_and_config(["--dataset_name", "d", "--output_dir", "o", *flags])[3]
    assert trm.trm_settings() == {"think_token_id": 7, "trm_rms_norm_eps": 1e-6, "thought_window": "slide",
                                  "n_cycles": 4}
    with pytest.raises(SystemExit):
        train_sft.make_parser().parse_args_and_config(["--dataset_name", "d", "--thought_mode", "deep"])


def test_resume_from_checkpoint_matches_an_uninterrupted_run(backbone, tmp_path):
    data = write_data(tmp_path, "qa")
    saving = ["--save_strategy", "steps", "--save_steps", "3", "--ema_decay", "0.5", "--dataloader_num_workers", "0"]
    full, _ = trainer_for(cli(backbone, data, tmp_path / "full", *saving))
    full.train()
    expected = trained_state(full)
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    os.rename(tmp_path / "full/checkpoint-3", resumed_dir / "checkpoint-3")
    args = make_parser().parse_args_and_config(cli(backbone, data, resumed_dir, *saving))
    resumed, _ = build_trainer(*args)
    checkpoint = resume_point(args[1])
    assert checkpoint == str(resumed_dir / "checkpoint-3")
    resumed.train(resume_from_checkpoint=checkpoint)
    assert resumed.state.global_step == 6
    mismatched = [name for name, value in trained_state(resumed).items()
                  if not torch.allclose(value, expected[name], rtol=1e-5, atol=1e-6)]
    assert not mismatched, mismatched
    for name, value in resumed.ema.shadow.items():
        torch.testing.assert_close(value, full.ema.shadow[name], rtol=1e-5, atol=1e-6, msg=name)


def test_saved_trm_weights_are_the_ema_weights(backbone, tmp_path):
    data_args, training_args, model_args, trm_args = make_parser().parse_args_and_config(
        cli(backbone, write_data(tmp_path, "qa"), tmp_path / "out", "--ema_decay", "0.7"))
    trainer, _ = build_trainer(data_args, training_args, model_args, trm_args)
    trainer.train()
    folder = save_final(trainer, trm_args, model_args, data_args, eval_results=None)
    saved = load_file(folder / "model.safetensors")
    prefix = "base_model.model.model.thoughts.modules_to_save.default."  # where PEFT keeps the trained TRM
    trm_names = [name for name in saved if prefix + name.removeprefix("model.thoughts.") in trainer.ema.shadow]
    assert len(trm_names) == len(trainer.ema.shadow)
    online = dict(trainer.model.named_parameters())
    for name in trm_names:
        torch.testing.assert_close(saved[name], trainer.ema.shadow[prefix + name.removeprefix("model.thoughts.")], msg=name)
    assert any(not torch.allclose(saved[n], online[prefix + n.removeprefix("model.thoughts.")]) for n in trm_names)


def test_early_stopping_stops_when_eval_loss_does_not_improve(backbone, tmp_path):
    trainer, _ = trainer_for(cli(
        backbone, write_data(tmp_path, "qa"), tmp_path / "out", "--learning_rate", "0", "--max_steps", "20",
        "--eval_strategy", "steps", "--eval_steps", "1", "--save_strategy", "steps", "--save_steps", "1",
        "--load_best_model_at_end", "true", "--metric_for_best_model", "eval_loss", "--save_total_limit", "2",
        "--early_stopping_patience", "2"))
    trainer.train()
    # The loss cannot improve at lr=0: the first evaluation is the best, two more without improvement stop the run.
    assert trainer.state.global_step == 3
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-1")


# ----------------------------------------------------------------------------------------------- folders and card


@pytest.fixture(scope="module")
def trained_run(backbone, tmp_path_factory) -> Path:
    """One short run with a checkpoint and a final folder."""
    tmp_path = tmp_path_factory.mktemp("run")
    args = cli(backbone, write_data(tmp_path, "qa"), tmp_path / "out", "--max_steps", "2", "--save_strategy",
               "steps", "--save_steps", "2", "--num_demo_answers", "1")
    train_sft.main(*make_parser().parse_args_and_config(args))
    return tmp_path / "out"


def test_checkpoint_and_final_folder_load_and_generate_in_a_fresh_process(trained_run):
    final, checkpoint = trained_run / "final", trained_run / "checkpoint-2"
    files = {path.name for path in final.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "modeling_smollm_trm.py",
            "configuration_smollm_trm.py", "tokenizer.json", "README.md"} <= files
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".pkl"))], files
    config = json.loads((final / "config.json").read_text())
    assert config["model_type"] == "smollm_trm" and "AutoModelForCausalLM" in config["auto_map"]
    assert (final / "chat_template.jinja").is_file() or "chat_template" in (final / "tokenizer_config.json").read_text()
    out = run_isolated(f"""
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
for folder in {[str(final), str(checkpoint)]!r}:
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    ids = tokenizer("user w10 w11 </s> assistant <think>", return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    print(folder, out.shape[1] - ids["input_ids"].shape[1])
""", cwd=trained_run, timeout=120)
    assert out.count(" 3\n") == 2, out


@pytest.mark.parametrize("source", ["model", "gathered_state_dict"])
def test_final_folder_logits_equal_the_trained_peft_model(backbone, tmp_path, source):
    """`gathered_state_dict` is the path of a sharded LoRA run (FSDP2, ZeRO-3): the merged folder is rebuilt on the
    CPU from the full state dict that `full_state_dict` gathers, here the model's own."""
    from transformers import AutoModelForCausalLM

    trainer, _ = trainer_for(cli(backbone, write_data(tmp_path, "qa"), tmp_path / "out", "--max_steps", "2"))
    trainer.train()
    batch = first_batch(trainer)
    state_dict = trainer.model.state_dict() if source == "gathered_state_dict" else None
    folder = export_model(trainer.model, trainer.processing_class, tmp_path / "final", state_dict)
    reloaded = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, trainer.model(**batch).logits, rtol=1e-4, atol=1e-4)


def test_model_card_parses_and_its_widgets_run_through_the_pipeline(trained_run):
    from huggingface_hub import ModelCard
    from transformers import pipeline

    final = trained_run / "final"
    card = ModelCard.load(final / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert "custom_code" in card.data.tags and "trust_remote_code=True" in card.text
    assert "eval_loss" in card.text
    generator = pipeline("text-generation", model=str(final), trust_remote_code=True)
    K = generator.model.config.num_latents
    for example in card.data.widget:
        with generator.model.watch_thoughts() as calls:  # chat messages alone must open <think>
            reply = generator(example["messages"], max_new_tokens=3, do_sample=False)
        assert reply[0]["generated_text"][-1]["role"] == "assistant"
        assert reply[0]["generated_text"][-1]["content"].strip(), "a non-empty answer"
        assert calls and calls[0].thoughts.shape[1] == K and calls[0].rows.all()


def test_the_card_says_what_the_run_did_and_its_snippet_runs_on_the_folder(trained_run, tmp_path):
    final = trained_run / "final"
    text = (final / "README.md").read_text()
    assert not (trained_run / "README.md").exists(), "one card, the model's: none at the output root"
    assert "MODEL" not in text and f'from_pretrained("{final.resolve()}"' in text  # no --hub_model_id: the folder
    state = json.loads((trained_run / "checkpoint-2" / "trainer_state.json").read_text())
    assert "| steps | 2 |" in text and f"| epochs | {round(state['epoch'], 2)} |" in text
    assert "| eval_loss |" in text and "runtime" not in text and "per_second" not in text
    generation = json.loads((final / "generation_config.json").read_text())
    assert generation["do_sample"] is False and generation["max_new_tokens"] == 256
    assert generation["eos_token_id"] is not None and generation["pad_token_id"] is not None
    snippet = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)
    assert '+ "<think>"' not in snippet, "the saved template opens <think> itself"
    run_isolated(snippet, cwd=tmp_path)


def test_card_metadata_names_the_hub_dataset_of_a_short_name():
    from smollm_trm.named_datasets import hub_dataset

    assert hub_dataset("gsm8k") == "openai/gsm8k"
    assert hub_dataset("sample") is None and hub_dataset("arith") is None and hub_dataset("data/train.jsonl") is None
    assert hub_dataset("me/my-math") == "me/my-math"


def test_push_uploads_the_folder_through_the_hub_client(trained_run, monkeypatch):
    from huggingface_hub import HfApi

    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)))
    monkeypatch.setattr(HfApi, "upload_folder",
                        lambda self, **kw: calls.append(("upload", kw["repo_id"], kw["folder_path"])) or "url")
    assert push_folder(trained_run / "final", "me/tiny-trm") == "url"
    assert calls[0][:2] == ("create", "me/tiny-trm") and calls[0][2]["exist_ok"] is True
    assert calls[1] == ("upload", "me/tiny-trm", str(trained_run / "final"))


def test_push_without_network_says_so_and_keeps_the_folder(trained_run, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match="folder is kept"):
        push_folder(trained_run / "final", "me/tiny-trm", token="hf_fake")
    assert (trained_run / "final/model.safetensors").is_file()


# ------------------------------------------------------------------------------------------------------- bad data


def test_bad_data_gives_the_documented_errors_and_reports(backbone, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('[{"question": "w10", "answer": "w11"},')
    with pytest.raises(ValueError, match="invalid JSON"):
        trainer_for(cli(backbone, broken, tmp_path / "out"))
    rows = qa_rows(8) + [{"question": "w12"}, {"question": " ".join(["w13"] * 80), "answer": "w14"}]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(row) + "\n" for row in rows))
    _, data = trainer_for(cli(backbone, mixed, tmp_path / "out", "--eval_fraction", "0"))
    reasons = dict(data.skipped["train"])
    assert set(reasons) == {8, 9} and "missing 'answer'" in reasons[8] and "exceed max_length=64" in reasons[9]
    useless = tmp_path / "useless.jsonl"
    useless.write_text(json.dumps({"question": "w12", "answer": " "}) + "\n")
    with pytest.raises(ValueError, match="No usable row"):
        trainer_for(cli(backbone, useless, tmp_path / "out", "--eval_fraction", "0"))


# ---------------------------------------------------------------------------------------------------- SIGKILL


KILLABLE = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
import train_sft
from smollm_trm.trainer import TRMSFTTrainer
original = TRMSFTTrainer._save_rng_state
def slow_save(self, output_dir):  # inside _save_checkpoint: weights written, trainer_state.json not yet
    original(self, output_dir)
    if self.state.global_step == 4:
        Path({marker!r}).write_text(output_dir)
        time.sleep(120)
TRMSFTTrainer._save_rng_state = slow_save
train_sft.main(*train_sft.make_parser().parse_args_and_config({args!r}))
"""


def test_sigkill_while_saving_resumes_from_the_last_complete_checkpoint(backbone, tmp_path):
    output_dir, marker = tmp_path / "out", tmp_path / "saving"
    args = cli(backbone, write_data(tmp_path, "qa"), output_dir, "--max_steps", "6", "--save_strategy", "steps",
               "--save_steps", "2")
    script = KILLABLE.format(root=str(ROOT), marker=str(marker), args=args)
    process = subprocess.Popen([sys.executable, "-c", script], env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 150
        while not marker.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert marker.exists(), f"training never reached the checkpoint-4 save: {process.stderr.read()[-2000:]}"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    half_written = output_dir / "checkpoint-4"
    assert (half_written / "model.safetensors").is_file() and not (half_written / "trainer_state.json").exists()
    assert last_complete_checkpoint(str(output_dir)) == str(output_dir / "checkpoint-2")
    parsed = make_parser().parse_args_and_config(args)
    assert resume_point(parsed[1]) == str(output_dir / "checkpoint-2")
    folder = train_sft.main(*parsed)
    state = json.loads((output_dir / "checkpoint-6/trainer_state.json").read_text())
    assert state["global_step"] == 6 and (folder / "model.safetensors").is_file()


def test_a_truncated_trainer_state_is_not_a_complete_checkpoint(tmp_path):
    for step in (1, 2, 3):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}/trainer_state.json").write_text('{"global_step": 1}')
        if step < 3:  # checkpoint-3 was killed before its manifest
            write_manifest(tmp_path / f"checkpoint-{step}")
    (tmp_path / "checkpoint-2/trainer_state.json").write_text('{"global_st')  # truncated after the manifest
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-1")


# ----------------------------------------------------------------------------------------------------- quickstart


@pytest.mark.slow
def test_quickstart_runs_end_to_end(tmp_path):
    """The README's command, shortened: SmolLM2-135M GGUF + TRM, LoRA, demo set; reload and answer."""
    result = subprocess.run(
        [sys.executable, "train_sft.py", "--config", "configs/quickstart.yaml", "--output_dir", str(tmp_path),
         "--max_steps", "2", "--eval_steps", "2", "--save_steps", "2", "--num_demo_answers", "1"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gold: '<think></think>" in result.stdout and "model: " in result.stdout
    assert (tmp_path / "final/model.safetensors").is_file() and (tmp_path / "checkpoint-2").is_dir()


def test_report_to_tensorboard_logs_the_trm_metrics_locally(backbone, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer, _ = trainer_for(cli(backbone, write_data(tmp_path, "qa"), tmp_path / "out", "--max_steps", "2",
                                 "--report_to", "tensorboard"))
    trainer.train()
    # transformers 5 writes TensorBoard runs under <output_dir>/runs/
    events = EventAccumulator(str(next((tmp_path / "out" / "runs").rglob("events.out.tfevents*")).parent))
    events.Reload()
    assert {"train/lm_loss", "train/thought_norm"} <= set(events.Tags()["scalars"])


def test_report_to_wandb_runs_offline_without_a_key(backbone, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "unset-by-the-test")  # records the original value, restored at teardown
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    args = cli(backbone, write_data(tmp_path, "qa"), tmp_path / "out", "--max_steps", "2", "--report_to", "wandb")
    from smollm_trm.training import configure_reporting

    configure_reporting(["wandb"])
    assert os.environ["WANDB_MODE"] == "offline"
    trainer, _ = trainer_for(args)
    trainer.train()
    import wandb

    wandb.finish()
    assert list((tmp_path / "wandb").glob("offline-run-*")), "wandb should have written an offline run"


def test_report_to_trackio_logs_the_trm_metrics_locally(backbone, tmp_path):
    import sqlite3

    # In its own process: trackio reads TRACKIO_DIR once, when it is imported.
    args = cli(backbone, write_data(tmp_path, "qa"), tmp_path / "out", "--max_steps", "2", "--report_to", "trackio")
    result = subprocess.run([sys.executable, "train_sft.py", *args], cwd=ROOT, capture_output=True, text=True,
                            env={**ENV, "TRACKIO_DIR": str(tmp_path / "trackio")}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    databases = list((tmp_path / "trackio").glob("*.db"))
    assert databases, "trackio should have written its local database"
    logged = " ".join(str(row) for db in databases for row in sqlite3.connect(db).execute("SELECT * FROM metrics"))
    assert "lm_loss" in logged and "thought_norm" in logged


def test_a_non_finite_loss_or_gradient_norm_stops_the_run(backbone, tmp_path):
    from types import SimpleNamespace

    from smollm_trm.callbacks import StopOnNonFiniteLoss

    trainer, _ = trainer_for(cli(backbone, write_data(tmp_path, "qa"), tmp_path / "out"))
    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, StopOnNonFiniteLoss))
    state, args = SimpleNamespace(global_step=50), SimpleNamespace(output_dir=str(tmp_path / "out"))
    callback.on_log(args, state, None, logs={"loss": 0.7, "grad_norm": 1.2, "learning_rate": 1e-3})
    for bad in ({"loss": 0.7, "grad_norm": float("nan")}, {"loss": float("inf")}, {"eval_loss": float("nan")}):
        with pytest.raises(RuntimeError, match=r"diverged at step 50"):
            callback.on_log(args, state, None, logs=bad)


def test_a_time_limit_stops_with_a_checkpoint_and_a_rerun_finishes(backbone, tmp_path):
    data, out = write_data(tmp_path, "qa"), tmp_path / "out"
    args = cli(backbone, data, out, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "100")
    assert train_sft.main(*make_parser().parse_args_and_config(args + ["--time_limit_s", "1e-9"])) is None
    assert last_complete_checkpoint(str(out)) == str(out / "checkpoint-1") and not (out / "final").exists()
    assert (out / "prepared_data").is_dir()  # for the rerun
    folder = train_sft.main(*make_parser().parse_args_and_config(args))
    assert folder == out / "final" and (folder / "README.md").is_file()
    assert not (out / "prepared_data").exists()  # nothing resumes a finished run
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4


def test_the_cards_snippet_loads_the_pushed_repo_id(tmp_path):
    from smollm_trm.hub import write_model_card

    write_model_card(tmp_path, repo_id="me/smollm-trm", base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
                     dataset="openai/gsm8k", settings={"num_latents": 16}, metrics={"eval_loss": 1.5,
                                                                                  "eval_runtime": 3.0})
    from huggingface_hub import ModelCard

    card = ModelCard.load(tmp_path / "README.md")
    assert 'from_pretrained("me/smollm-trm", trust_remote_code=True)' in card.text
    assert card.data.datasets == ["openai/gsm8k"]
    assert "| eval_loss | 1.5000 |" in card.text and "eval_runtime" not in card.text
