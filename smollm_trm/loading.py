"""The model a training run starts from (a saved SmolLM+TRM folder, or a backbone wrapped with a new TRM), and LoRA
on its backbone."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

import configuration_smollm_trm
import modeling_smollm_trm
from modeling_smollm_trm import THINK_TOKENS, SmolLMTRMForCausalLM, add_think_tokens
from smollm_trm.chat import make_template_think
from smollm_trm.hub import is_hub_id
from smollm_trm.model_sources import TRM_MODEL_TYPE, is_smollm_trm_folder, resolve_model_source

THOUGHT_MODULE = "thoughts"  # SmolLMTRMModel's attribute holding the TRM (or the pause vectors)


def is_thought_parameter(name: str) -> bool:
    """A parameter of the thought module, also inside PEFT's wrappers."""
    return f".{THOUGHT_MODULE}." in f".{name}"


def is_smollm_trm_source(source: str, revision: str | None = None) -> bool:
    """Whether a folder or Hub id holds a SmolLM+TRM model, from its config.json alone (no code runs)."""
    if os.path.isdir(source) or not is_hub_id(source):
        return is_smollm_trm_folder(source)
    from transformers import PreTrainedConfig

    try:
        config, _ = PreTrainedConfig.get_config_dict(source, revision=revision)
    except OSError:  # unreachable: the loader that follows says so
        return False
    return config.get("model_type") == TRM_MODEL_TYPE


def differing_code_files(source: str, revision: str | None = None) -> list[str]:
    """The code files of a SmolLM+TRM folder or Hub repo that are not byte for byte this installed project's (a
    file it lacks is not counted: our classes build it either way)."""
    installed = {"configuration_smollm_trm.py": Path(configuration_smollm_trm.__file__),
                 "modeling_smollm_trm.py": Path(modeling_smollm_trm.__file__)}
    differing = []
    for name, ours in installed.items():
        theirs = _code_file(source, name, revision)
        if theirs is not None and theirs.read_bytes() != ours.read_bytes():
            differing.append(name)
    return differing


def _code_file(source: str, name: str, revision: str | None) -> Path | None:
    if os.path.isdir(source):
        path = Path(source) / name
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(source, name, revision=revision))
    except EntryNotFoundError:
        return None


def load_causal_lm(source: str, trust_remote_code: bool = False, **loading):
    """A causal LM from a folder or Hub id. A SmolLM+TRM one whose code files are this project's (or absent) is
    built with this project's own classes, so that no code from the folder runs and none needs consent. One whose
    code differs is foreign code like any other model's: it runs only with `trust_remote_code` (transformers' rule),
    and without it the folder is refused rather than silently built with other code than its own."""
    from transformers import AutoModelForCausalLM

    if is_smollm_trm_source(source, loading.get("revision")):
        differing = differing_code_files(source, loading.get("revision"))
        if not differing:
            return SmolLMTRMForCausalLM.from_pretrained(source, **loading)
        if not trust_remote_code:
            raise ValueError(
                f"{source} is a SmolLM+TRM model whose {', '.join(differing)} differ from this installed "
                f"smollm-trm's: its code is foreign, and it runs only with consent. Pass --trust_remote_code to run "
                f"its own code, or replace those files with this version's to load it with the installed classes.")
    return AutoModelForCausalLM.from_pretrained(source, trust_remote_code=trust_remote_code, **loading)


def load_tokenizer(source: str, trust_remote_code: bool = False, **loading):
    """`AutoTokenizer.from_pretrained(source, ...)`. For a SmolLM+TRM folder or Hub id whose code is this project's it
    is handed the model's config, built with this project's class: left to find it, AutoTokenizer tries `AutoConfig`
    without remote code, fails on the custom model type and falls back to a generic config with a misleading warning
    ("a model of type smollm_trm to instantiate a model of type ''") on every load. A folder with other code keeps
    transformers' own path: its config is foreign, and our class might refuse it before consent is asked."""
    from transformers import AutoTokenizer

    revision = loading.get("revision")
    if is_smollm_trm_source(source, revision) and not differing_code_files(source, revision):
        config = configuration_smollm_trm.SmolLMTRMConfig.from_pretrained(source, revision=revision)
        loading = {**loading, "config": config}
    return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **loading)


def load_model(model_args, trm_args, trust_remote_code: bool = False):
    """(model, tokenizer, think tokens added to the tokenizer): a saved SmolLM+TRM, or a backbone wrapped.
    `trust_remote_code` (SFTConfig's `--trust_remote_code`) lets a backbone's own code run; a SmolLM+TRM folder needs
    none."""
    source, gguf_file = resolve_model_source(model_args.model_name_or_path, trm_args.gguf_file)
    loading = {"dtype": model_args.dtype, "attn_implementation": model_args.attn_implementation,
               "revision": model_args.model_revision}
    loading = {key: value for key, value in loading.items() if value is not None}
    # Explicit either way: left unset, transformers asks on the terminal whether to run a folder's auto_map code.
    consent = {"trust_remote_code": trust_remote_code}
    if is_smollm_trm_source(source, model_args.model_revision):
        tokenizer = load_tokenizer(source, revision=model_args.model_revision, **consent)
        make_template_think(tokenizer)  # a folder saved before templates thought
        model = load_causal_lm(source, trust_remote_code=trust_remote_code, **loading, **trm_args.trm_settings())
        check_think_token(model.config, tokenizer)
        return model, tokenizer, []
    tokenizer = load_tokenizer(source, gguf_file=gguf_file, revision=model_args.model_revision, **consent)
    # Added here rather than in from_base, so that we know which rows are new and must train.
    added = add_think_tokens(tokenizer)
    make_template_think(tokenizer)
    model = SmolLMTRMForCausalLM.from_base(source, tokenizer=tokenizer, gguf_file=gguf_file, **loading, **consent,
                                           **trm_args.trm_settings())
    check_think_token(model.config, tokenizer)
    return model, tokenizer, added


def check_think_token(config, tokenizer) -> None:
    """A SmolLM+TRM config whose `think_token_id` is not the tokenizer's `<think>` would never insert a thought: the
    model would train and answer as a plain backbone, silently."""
    if getattr(config, "model_type", None) != TRM_MODEL_TYPE or config.thought_mode == "none":
        return
    think_id = tokenizer.convert_tokens_to_ids(THINK_TOKENS[0])  # the unknown token's id when it lacks one
    if think_id != config.think_token_id:
        raise ValueError(f"think_token_id={config.think_token_id} in the model's config, but the tokenizer gives "
                         f"{THINK_TOKENS[0]!r} the id {think_id}: the thoughts would never be inserted. Use the "
                         "tokenizer saved with the model, or fix think_token_id.")


def apply_lora(model, model_args, tokenizer, added_tokens: list[str]):
    """LoRA on the backbone's linear layers; the thought modules and any new think-token rows train in full."""
    from peft import LoraConfig, get_peft_model
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    backbone_linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.model.language_model.named_modules()
                              if isinstance(module, torch.nn.Linear)})
    wanted = model_args.lora_target_modules or ["all-linear"]
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    names = backbone_linear if wanted == ["all-linear"] else wanted
    if set(names) - set(backbone_linear):
        raise ValueError(f"lora_target_modules {sorted(set(names) - set(backbone_linear))} are not linear layers of "
                         f"the backbone; it has {backbone_linear} (or pass all-linear).")
    modules_to_save = list(model_args.lora_modules_to_save or [])
    if model.model.thoughts is not None:
        modules_to_save.append(THOUGHT_MODULE)
    new_ids = tokenizer.convert_tokens_to_ids(added_tokens)
    config = LoraConfig(
        r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
        # Anchored on the backbone: the TRM has its own q_proj / o_proj, which train in full instead.
        target_modules=rf"^model\.language_model\..*\.({'|'.join(map(re.escape, names))})$",
        modules_to_save=modules_to_save or None,
        trainable_token_indices={"embed_tokens": new_ids} if new_ids else None,
        use_rslora=model_args.use_rslora, use_dora=model_args.use_dora, task_type="CAUSAL_LM",
    )
    # Under ZeRO-3 the adapters keep the backbone's dtype: DeepSpeed packs the trainable partitions into one buffer of
    # one dtype, and PEFT would otherwise upcast them to float32 beside a bfloat16 TRM (the fix TRL applies too).
    return get_peft_model(model, config, autocast_adapter_dtype=not is_deepspeed_zero3_enabled())


def is_peft(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def thought_model(model) -> SmolLMTRMForCausalLM:
    """The SmolLMTRMForCausalLM itself, under PEFT's wrapper or not."""
    return model.get_base_model() if is_peft(model) else model
