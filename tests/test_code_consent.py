"""No code from a model folder runs without consent: SmolLM+TRM folders load with the project's own classes, other
folders' code runs only with `--trust_remote_code` (transformers' rule), in training and in eval."""

import json
import textwrap

import torch
from conftest import tiny_model, tiny_text_config, tiny_tokenizer
from test_train_sft import CHAT_TEMPLATE

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


def test_a_smollm_trm_folder_loads_with_the_projects_classes_and_runs_none_of_its_code(tmp_path):
    folder, model = saved_trm_folder(tmp_path)
    marker = tmp_path / "payload-ran"
    plant(folder, marker)
    loaded = eval_load_model(str(folder))
    assert type(loaded.model) is SmolLMTRMForCausalLM
    ids = torch.tensor([[7, 8, 5, 9]])
    torch.testing.assert_close(loaded.model(input_ids=ids).logits, model(input_ids=ids).logits)
    data_args, training_args, model_args, trm_args = make_parser().parse_args_and_config(
        ["--model_name_or_path", str(folder), "--dataset_name", "x.jsonl", "--output_dir", str(tmp_path / "out")])
    trained, _, _ = train_load_model(model_args, trm_args, training_args.trust_remote_code)
    assert type(trained) is SmolLMTRMForCausalLM
    assert not marker.exists()


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
    consented = eval_load_model(str(folder), trust_remote_code=True)
    assert type(consented.model).__name__ == "Payload" and marker.exists()
