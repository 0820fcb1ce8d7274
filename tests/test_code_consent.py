"""No code from a model folder runs without consent: SmolLM+TRM folders load with the project's own classes, other
folders' code runs only with `--trust_remote_code` (transformers' rule), in training and in eval."""

import json
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import tiny_model, tiny_text_config, tiny_tokenizer
from test_train_sft import CHAT_TEMPLATE

import configuration_smollm_trm
import modeling_smollm_trm
from eval.runner import load_model as eval_load_model
from modeling_smollm_trm import SmolLMTRMForCausalLM
from smollm_trm.arguments import make_parser
from smollm_trm.loading import load_model as train_load_model

PAYLOAD = "open({marker!r}, 'w').close()\n"


def plant(folder, marker) -> None:
    """Replace the folder's code files with a payload that leaves `marker` when it runs."""
    for name in ("modeling_smollm_trm.py", "configuration_smollm_trm.py", "modeling_payload.py"):
        (folder / name).write_text(PAYLOAD.format(marker=str(marker)))


def saved_trm_folder(tmp_path):
    folder = tmp_path / "trm"
    model = tiny_model()
    model.save_pretrained(folder)
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder, model


def train_args(folder, tmp_path, *extra):
    return make_parser().parse_args_and_config(
        ["--model_name_or_path", str(folder), "--dataset_name", "x.jsonl", "--output_dir", str(tmp_path / "out"),
         *extra])


def test_a_smollm_trm_folder_with_our_code_loads_with_the_projects_classes(tmp_path):
    folder, model = saved_trm_folder(tmp_path)
    assert (folder / "modeling_smollm_trm.py").read_bytes() == Path(modeling_smollm_trm.__file__).read_bytes()
    loaded = eval_load_model(str(folder))
    assert type(loaded.model) is SmolLMTRMForCausalLM  # the installed class, not transformers_modules' copy
    ids = torch.tensor([[7, 8, 5, 9]])
    torch.testing.assert_close(loaded.model(input_ids=ids).logits, model(input_ids=ids).logits)
    _, training_args, model_args, trm_args = train_args(folder, tmp_path)
    trained, _, _ = train_load_model(model_args, trm_args, training_args.trust_remote_code)
    assert type(trained) is SmolLMTRMForCausalLM


def test_a_smollm_trm_folder_with_other_code_is_foreign_and_runs_only_with_consent(tmp_path):
    folder, _ = saved_trm_folder(tmp_path)
    marker = tmp_path / "payload-ran"
    plant(folder, marker)
    with pytest.raises(ValueError, match="modeling_smollm_trm.py differ from this installed"):
        eval_load_model(str(folder))
    _, training_args, model_args, trm_args = train_args(folder, tmp_path)
    with pytest.raises(ValueError, match="--trust_remote_code to run its own code"):
        train_load_model(model_args, trm_args, training_args.trust_remote_code)
    assert not marker.exists()
    with pytest.raises(Exception):  # its (planted) code runs, and is no model
        eval_load_model(str(folder), trust_remote_code=True)
    assert marker.exists()


def test_training_from_our_folder_saves_the_installed_code_not_the_folders(tmp_path):
    folder, _ = saved_trm_folder(tmp_path)
    _, training_args, model_args, trm_args = train_args(folder, tmp_path)
    trained, tokenizer, _ = train_load_model(model_args, trm_args, training_args.trust_remote_code)
    trained.save_pretrained(tmp_path / "saved")
    for module in (modeling_smollm_trm, configuration_smollm_trm):
        name = Path(module.__file__).name
        assert (tmp_path / "saved" / name).read_bytes() == Path(module.__file__).read_bytes(), name


def test_a_plain_folder_with_an_auto_map_runs_its_code_only_with_consent(tmp_path):
    from transformers import SmolLM3ForCausalLM

    folder = tmp_path / "plain"
    SmolLM3ForCausalLM(tiny_text_config()).save_pretrained(folder)
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_payload.Payload"}
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "payload-ran"
    (folder / "modeling_payload.py").write_text(PAYLOAD.format(marker=str(marker)) + textwrap.dedent("""
        from transformers import SmolLM3ForCausalLM
        class Payload(SmolLM3ForCausalLM):
            pass
        """))
    loaded = eval_load_model(str(folder))
    assert type(loaded.model) is SmolLM3ForCausalLM and not marker.exists()
    _, training_args, model_args, trm_args = train_args(folder, tmp_path)  # training: the same rule
    wrapped, _, _ = train_load_model(model_args, trm_args, training_args.trust_remote_code)
    assert type(wrapped.model.language_model).__name__ == "SmolLM3Model" and not marker.exists()
    consented = eval_load_model(str(folder), trust_remote_code=True)
    assert type(consented.model).__name__ == "Payload" and marker.exists()


def test_loading_our_folder_never_leaves_transformers_to_ask_on_the_terminal(tmp_path, monkeypatch):
    """transformers asks interactively whether to run a folder's auto_map code when `trust_remote_code` is left
    unset; training and eval always say it, so a run never stops at that question. For our folder nothing asks at
    all: the model is built with our classes and the tokenizer is handed its config."""
    import transformers.models.auto.configuration_auto as configuration_auto
    import transformers.models.auto.tokenization_auto as tokenization_auto

    asked = []
    real = tokenization_auto.resolve_trust_remote_code

    def recording(trust_remote_code, *args, **kwargs):
        asked.append(trust_remote_code)
        return real(trust_remote_code, *args, **kwargs)

    for module in (configuration_auto, tokenization_auto):  # AutoTokenizer reads the config's auto_map too
        monkeypatch.setattr(module, "resolve_trust_remote_code", recording)
    folder, _ = saved_trm_folder(tmp_path)
    eval_load_model(str(folder))
    _, training_args, model_args, trm_args = train_args(folder, tmp_path)
    train_load_model(model_args, trm_args, training_args.trust_remote_code)
    assert not asked, asked


def test_loading_our_folders_tokenizer_builds_no_generic_config(tmp_path, monkeypatch):
    """AutoTokenizer, left to find a SmolLM+TRM folder's config, cannot build it without remote code and falls back
    to a generic one with a warning on every load ("a model of type smollm_trm to instantiate a model of type ''");
    training and eval hand it the model's config."""
    from transformers.utils import logging as hf_logging

    warned = []
    logger = hf_logging.get_logger("transformers.configuration_utils")
    monkeypatch.setattr(logger, "warning", lambda message, *args, **kwargs: warned.append(str(message)))
    folder, _ = saved_trm_folder(tmp_path)
    eval_load_model(str(folder))
    _, training_args, model_args, trm_args = train_args(folder, tmp_path)
    train_load_model(model_args, trm_args, training_args.trust_remote_code)
    assert not [message for message in warned if "to instantiate a model of type" in message], warned
