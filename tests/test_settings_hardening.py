"""Settings and loading that used to go silently wrong: each case here gave a wrong result or a raw error before."""

import json
import math

import pytest
import torch
from conftest import THINK, tiny_config, tiny_model, tiny_tokenizer
from test_train_sft import backbone, cli, trainer_for, write_data  # noqa: F401  (backbone is a fixture)

from modeling_smollm_trm import SmolLMTRMForCausalLM
from smollm_trm.loading import check_think_token


def test_from_base_sends_dtype_to_the_loader_not_the_config(backbone):
    model = SmolLMTRMForCausalLM.from_base(str(backbone), dtype="bfloat16")
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert model.model.language_model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("name, value", [("trm_rms_norm_eps", 0.0), ("trm_rms_norm_eps", -1e-5),
                                         ("trm_expansion", 0.0), ("trm_expansion", float("nan")),
                                         ("trm_expansion", 0.01), ("halt_loss_weight", float("nan")),
                                         ("halt_loss_weight", float("inf")), ("halt_loss_weight", -1.0),
                                         ("probe_loss_weight", float("nan"))])
def test_a_setting_out_of_range_is_refused_by_name(name, value):
    with pytest.raises(ValueError, match=name):
        tiny_config(**{name: value})


def test_a_misspelled_forward_keyword_is_refused(model):
    ids = torch.tensor([[7, THINK, 8]])
    with pytest.raises(TypeError, match="n_cylces"):
        model(input_ids=ids, n_cylces=2)
    with pytest.raises(ValueError, match="n_cylces"):
        model.model(input_ids=ids, n_cylces=2)


def test_a_batch_with_every_label_masked_has_a_zero_loss_not_nan():
    model = tiny_model().train()
    ids = torch.tensor([[7, 8, THINK, 9]])
    out = model(input_ids=ids, labels=torch.full_like(ids, -100), num_items_in_batch=0)
    assert out.loss.item() == 0.0 and not math.isnan(out.lm_loss.item())


def test_a_think_token_id_that_is_not_the_tokenizers_is_refused():
    tokenizer = tiny_tokenizer()  # its <think> is THINK
    check_think_token(tiny_config(), tokenizer)
    with pytest.raises(ValueError, match="think_token_id=7"):
        check_think_token(tiny_config(think_token_id=7), tokenizer)


def test_a_saved_folder_whose_think_token_id_is_not_its_tokenizers_is_refused_by_training_and_eval(tmp_path):
    from test_train_sft import CHAT_TEMPLATE

    from eval.runner import load_model as eval_load_model
    from smollm_trm.arguments import make_parser
    from smollm_trm.loading import load_model as train_load_model

    folder = tmp_path / "trm"
    tiny_model().save_pretrained(folder)
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["think_token_id"] = THINK + 2  # another token than the tokenizer's <think>
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"think_token_id={THINK + 2}"):
        eval_load_model(str(folder))
    _, training_args, model_args, trm_args = make_parser().parse_args_and_config(
        ["--model_name_or_path", str(folder), "--dataset_name", "x.jsonl", "--output_dir", str(tmp_path / "out")])
    with pytest.raises(ValueError, match=f"think_token_id={THINK + 2}"):
        train_load_model(model_args, trm_args, training_args.trust_remote_code)


def test_dtype_on_the_command_line_loads_the_weights_in_it(backbone, tmp_path):
    from smollm_trm.arguments import make_parser
    from smollm_trm.loading import load_model as train_load_model

    _, training_args, model_args, trm_args = make_parser().parse_args_and_config(
        ["--model_name_or_path", str(backbone), "--dataset_name", "x.jsonl", "--output_dir", str(tmp_path / "out"),
         "--dtype", "bfloat16", "--num_latents", "4", "--trm_hidden_size", "16", "--trm_num_heads", "2"])
    model, _, _ = train_load_model(model_args, trm_args, training_args.trust_remote_code)
    assert model.model.language_model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16


def test_an_output_folder_that_cannot_be_written_is_refused_before_training(backbone, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a folder below a file cannot be made, whoever runs the test (root included)
    data = write_data(tmp_path, "qa")
    with pytest.raises(ValueError, match="cannot be written"):
        trainer_for(cli(backbone, data, blocker / "out"))


def test_rerunning_a_finished_run_trains_nothing_and_says_where_its_model_is(backbone, tmp_path, capsys):
    import train_sft
    from smollm_trm.arguments import make_parser

    # With a checkpoint at the last step and EMA weights: the cases where a rerun used to train on (step 3 of 2)
    args = cli(backbone, write_data(tmp_path, "qa"), tmp_path / "out", "--max_steps", "2", "--save_strategy", "steps",
               "--save_steps", "1", "--ema_decay", "0.9")
    folder = train_sft.main(*make_parser().parse_args_and_config(args))
    weights = (folder / "model.safetensors").read_bytes()
    written = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    checkpoints = sorted(path.name for path in folder.parent.glob("checkpoint-*"))
    capsys.readouterr()
    again = train_sft.main(*make_parser().parse_args_and_config(args))
    assert again == folder and (folder / "model.safetensors").read_bytes() == weights
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == written, "final/ is not rewritten"
    assert sorted(path.name for path in folder.parent.glob("checkpoint-*")) == checkpoints, "no step past max_steps"
    assert f"{folder} already holds the model" in capsys.readouterr().out


def test_resuming_a_run_with_other_settings_is_refused_by_name_unless_starting_over(backbone, tmp_path):
    import train_sft
    from smollm_trm.arguments import make_parser

    args = cli(backbone, write_data(tmp_path, "qa"), tmp_path / "out", "--max_steps", "3", "--save_strategy", "steps",
               "--save_steps", "1")
    assert train_sft.main(*make_parser().parse_args_and_config(args + ["--time_limit_s", "1e-9"])) is None
    first_state = (tmp_path / "out" / "checkpoint-1" / "trainer_state.json").read_text()
    changed = args + ["--learning_rate", "5e-3"]
    with pytest.raises(ValueError, match=r"learning_rate: 0.01 -> 0.005"):
        train_sft.main(*make_parser().parse_args_and_config(changed))
    with pytest.raises(ValueError, match="num_latents"):
        train_sft.main(*make_parser().parse_args_and_config(args + ["--num_latents", "3"]))
    folder = train_sft.main(*make_parser().parse_args_and_config(changed + ["--start_over"]))
    assert folder is not None  # trained anew from step 0: checkpoint-1 is the new run's
    assert (tmp_path / "out" / "checkpoint-1" / "trainer_state.json").read_text() != first_state
    assert json.loads((tmp_path / "out" / "run_settings.json").read_text())["learning_rate"] == 5e-3
    assert train_sft.main(*make_parser().parse_args_and_config(changed)) == folder  # same settings: finished


def test_a_run_killed_while_saving_its_final_folder_leaves_none_that_looks_like_a_model(backbone, tmp_path,
                                                                                         monkeypatch):
    import train_sft
    from smollm_trm import export
    from smollm_trm.arguments import make_parser

    args = cli(backbone, write_data(tmp_path, "qa"), tmp_path / "out", "--max_steps", "2")

    def killed(*args, **kwargs):  # the weights are written, the card (the last file) is not
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "write_model_card", killed)
    with pytest.raises(KeyboardInterrupt):
        train_sft.main(*make_parser().parse_args_and_config(args))
    assert not (tmp_path / "out" / "final").exists() and export.finished_model(tmp_path / "out") is None
    monkeypatch.undo()
    folder = train_sft.main(*make_parser().parse_args_and_config(args))
    assert (folder / "model.safetensors").is_file() and (folder / "README.md").is_file()
    assert not (tmp_path / "out" / ".final.partial").exists()


def test_every_bad_row_is_written_to_a_file_in_the_output_folder_and_the_message_names_it(backbone, tmp_path,
                                                                                            caplog):
    import json

    rows = [{"question": f"w{10 + i}", "answer": "w11"} for i in range(4)] + [{"question": f"w{20 + i}"}
                                                                              for i in range(9)]
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with caplog.at_level("WARNING"):
        trainer_for(cli(backbone, data, tmp_path / "out", "--eval_fraction", "0"))
    report = tmp_path / "out" / "bad_rows.jsonl"
    listed = [json.loads(line) for line in report.read_text().splitlines()]
    assert [row["index"] for row in listed] == list(range(4, 13))  # all 9, where the message shows 5
    assert all("missing 'answer'" in row["reason"] and row["part"] == "train" for row in listed)
    assert str(report) in caplog.text
    with pytest.raises(ValueError, match="bad_rows.jsonl"):
        trainer_for(cli(backbone, data, tmp_path / "out2", "--eval_fraction", "0", "--on_bad_row", "error"))


@pytest.mark.parametrize("flags", [["--report_to", "tensorboard", "wandb"], ["--report_to", "tensorboard,wandb"],
                                   ["--report_to=tensorboard,wandb"]])
def test_several_trackers_on_the_command_line(flags):
    from smollm_trm.arguments import make_parser

    parsed = make_parser().parse_args_and_config(["--dataset_name", "x.jsonl", "--output_dir", "out", *flags,
                                                  "--seed", "3"])
    assert parsed[1].report_to == ["tensorboard", "wandb"] and parsed[1].seed == 3


def test_the_saved_config_holds_no_local_path_nor_the_gguf_loading_metadata(tmp_path):
    import json

    from smollm_trm.export import export_model

    model = tiny_model()
    model.config.text_config._name_or_path = "/home/someone/models/backbone"
    model.config.text_config.quantization_config = {"quant_method": "gguf", "gguf_file": "x.gguf", "dequantize": False}
    folder = export_model(model, tiny_tokenizer(), tmp_path / "out")
    text = (folder / "config.json").read_text()
    assert "/home/someone" not in text and "gguf" not in text
    reloaded = SmolLMTRMForCausalLM.from_pretrained(folder)
    ids = torch.tensor([[7, THINK, 8]])
    torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert json.loads(text)["text_config"]["hidden_size"] == model.config.text_config.hidden_size


def test_a_run_recorded_before_a_setting_existed_resumes_at_that_settings_default(tmp_path):
    """A run_settings.json written by older code lacks the settings added since: they count as their defaults (what
    that run trained with), so the run resumes; given another value, it is refused as any change is."""
    from smollm_trm.checkpoints import RUN_SETTINGS_FILE, check_same_run

    (tmp_path / RUN_SETTINGS_FILE).write_text(json.dumps({"learning_rate": 0.01}))
    defaults = {"learning_rate": 5e-5, "thought_teacher_forcing": 0.0}
    check_same_run(str(tmp_path), {"learning_rate": 0.01, "thought_teacher_forcing": 0.0}, False, defaults=defaults)
    assert json.loads((tmp_path / RUN_SETTINGS_FILE).read_text())["thought_teacher_forcing"] == 0.0
    (tmp_path / RUN_SETTINGS_FILE).write_text(json.dumps({"learning_rate": 0.01}))
    with pytest.raises(ValueError, match=r"thought_teacher_forcing: 0.0 -> 0.5"):
        check_same_run(str(tmp_path), {"learning_rate": 0.01, "thought_teacher_forcing": 0.5}, False,
                       defaults=defaults)
    with pytest.raises(ValueError, match=r"thought_teacher_forcing: None -> 0.0"):  # without defaults: any new key
        check_same_run(str(tmp_path), {"learning_rate": 0.01, "thought_teacher_forcing": 0.0}, False)
