"""Save, then load in a fresh isolated process through the Auto classes with trust_remote_code, offline."""

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import PAD_ID, THINK, pad_batch, run_isolated, tiny_model, tiny_text_config, tiny_tokenizer
from safetensors.torch import load_file

PROMPTS = [[7, 8, 9, THINK], [11, THINK, 12, 13]]

# Runs with `python -I`: the project is not importable, so the class must come from the checkpoint's own code.
LOAD_AND_COMPARE = r"""
import json, sys, torch
from transformers import AutoConfig, AutoModelForCausalLM, pipeline
folder, expected = sys.argv[1], torch.load(sys.argv[2])
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
# The reference ran with eager attention; the same kernels make the comparison exact.
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, attn_implementation="eager").eval()
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
assert type(config).__name__ == "SmolLMTRMConfig"
logits = model(input_ids=expected["ids"], attention_mask=expected["mask"]).logits
generated = model.generate(input_ids=expected["ids"], attention_mask=expected["mask"], max_new_tokens=5,
                           do_sample=False)
generator = pipeline("text-generation", model=folder, trust_remote_code=True)
text = generator("w7 w8 <think>", max_new_tokens=3, do_sample=False)[0]["generated_text"]
for dtype, attn in [(torch.bfloat16, "sdpa"), (torch.float32, "eager")]:
    other = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=dtype,
                                                 attn_implementation=attn, device_map="auto")
    assert other.dtype == dtype and other.model.config._attn_implementation == attn
    assert torch.isfinite(other(input_ids=expected["ids"]).logits).all()
print("RESULT", json.dumps({"max_logit_diff": (logits - expected["logits"]).abs().max().item(),
                  "same_generation": bool(torch.equal(generated, expected["generated"])), "text": text}))
"""


def result_line(stdout: str) -> str:
    results = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert results, stdout[-3000:]
    return results[-1].removeprefix("RESULT ")


@pytest.mark.parametrize("settings", [{}, {"thought_mode": "pause", "thought_window": "slide"}])
def test_reload_in_a_fresh_process_gives_identical_logits_and_generations(tmp_path, settings):
    model = tiny_model(text_config=tiny_text_config(initializer_range=0.15), **settings)
    model.generation_config.update(pad_token_id=PAD_ID, eos_token_id=None)
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    ids = torch.tensor(PROMPTS)
    mask = torch.ones_like(ids)
    expected = {"ids": ids, "mask": mask, "logits": model(input_ids=ids, attention_mask=mask).logits,
                "generated": model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False)}
    torch.save(expected, tmp_path / "expected.pt")
    report = json.loads(result_line(run_isolated(LOAD_AND_COMPARE, str(folder), str(tmp_path / "expected.pt"),
                                                 cwd=tmp_path)))
    assert report["max_logit_diff"] == 0.0
    assert report["same_generation"]
    assert report["text"].startswith("w7 w8 <think>")


# The base model through AutoModel, beside the causal LM through AutoModelForCausalLM, from the same folder.
LOAD_BASE_MODEL = r"""
import json, sys, torch
from transformers import AutoModel, AutoModelForCausalLM
folder, expected = sys.argv[1], torch.load(sys.argv[2])
base = AutoModel.from_pretrained(folder, trust_remote_code=True, attn_implementation="eager").eval()
causal_lm = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, attn_implementation="eager").eval()
with torch.no_grad():
    hidden = base(input_ids=expected["ids"], attention_mask=expected["mask"]).last_hidden_state
    causal_hidden = causal_lm.model(input_ids=expected["ids"], attention_mask=expected["mask"]).last_hidden_state
    head_logits = causal_lm.lm_head(hidden)
print("RESULT", json.dumps({"class": type(base).__name__, "module": type(base).__module__,
                            "hidden_diff": (hidden - causal_hidden).abs().max().item(),
                            "logit_diff": (head_logits - expected["logits"]).abs().max().item()}))
"""


@pytest.mark.parametrize("settings", [{}, {"thought_mode": "pause"}])
def test_auto_model_loads_the_base_model_whose_hidden_states_give_the_causal_lms_logits(tmp_path, settings):
    model = tiny_model(text_config=tiny_text_config(initializer_range=0.15), **settings)
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    ids, mask = pad_batch([[7, 8, 9, THINK, 10], [11, THINK, 12]], ["right", "left"])
    with torch.no_grad():
        torch.save({"ids": ids, "mask": mask, "logits": model(input_ids=ids, attention_mask=mask).logits},
                   tmp_path / "expected.pt")
    report = json.loads(result_line(run_isolated(LOAD_BASE_MODEL, str(folder), str(tmp_path / "expected.pt"),
                                                 cwd=tmp_path)))
    assert report["class"] == "SmolLMTRMModel" and report["module"].startswith("transformers_modules.")
    assert report["hidden_diff"] == 0.0
    assert report["logit_diff"] < 1e-5  # every position, padding included, through the thoughts


def test_checkpoint_is_safetensors_with_auto_map_and_both_code_files(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "configuration_smollm_trm.py", "modeling_smollm_trm.py"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_smollm_trm.SmolLMTRMConfig",
                                  "AutoModel": "modeling_smollm_trm.SmolLMTRMModel",
                                  "AutoModelForCausalLM": "modeling_smollm_trm.SmolLMTRMForCausalLM"}
    weights = load_file(tmp_path / "model.safetensors")
    assert "model.thoughts.y_init" in weights and "model.thoughts.compressor.latents" in weights


def test_remote_code_imports_only_torch_transformers_and_its_config():
    root = Path(__file__).resolve().parent.parent
    for name in ("modeling_smollm_trm.py", "configuration_smollm_trm.py"):
        source = (root / name).read_text()
        imports = {line.split()[1].split(".")[0] for line in source.splitlines()
                   if line.startswith(("import ", "from ")) or line.startswith(("    from ", "    import "))
                   and "configuration_smollm_trm" in line}
        # the standard library aside (DeepSpeed, under ZeRO-3 only, is imported by name at run time)
        third_party = imports - set(sys.stdlib_module_names)
        assert third_party <= {"torch", "transformers", "huggingface_hub", "configuration_smollm_trm", ""}, (
            name, imports)
        for risky in (r"pickle", r"torch\.load", r"(?<![.\w])eval\(", r"(?<![.\w])exec\(", r"subprocess", r"urllib",
                      r"requests", r"hf_hub_download", r"snapshot_download"):
            assert not re.search(risky, source), (name, risky)


def test_a_configuration_file_in_the_working_directory_does_not_shadow_the_projects(tmp_path):
    root = Path(__file__).resolve().parent.parent
    (tmp_path / "configuration_smollm_trm.py").write_text(
        "open('shadow-ran', 'w').close()\nclass SmolLMTRMConfig: pass\n")
    # The working directory first on sys.path, as for `python script.py` run from it; the project after it.
    out = run_isolated(f"import sys; sys.path[:0] = ['', {str(root)!r}]; import modeling_smollm_trm as m; "
                       "print(m.SmolLMTRMConfig.__module__, sys.modules[m.SmolLMTRMConfig.__module__].__file__)",
                       cwd=tmp_path)
    assert not (tmp_path / "shadow-ran").exists()
    assert out.split()[1] == str(root / "configuration_smollm_trm.py")
