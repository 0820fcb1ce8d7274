"""Export: the folder `AutoModelForCausalLM(trust_remote_code=True)` loads, from a trained model whole, merged from
LoRA, or gathered from FSDP2 / ZeRO-3 shards; and the run's final folder with its card."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
from pathlib import Path

import torch

from configuration_smollm_trm import SmolLMTRMConfig
from smollm_trm.checkpoints import sync_folder, sync_tree
from smollm_trm.hub import write_model_card
from smollm_trm.loading import is_peft, thought_model
from smollm_trm.model_sources import hub_base_model
from smollm_trm.named_datasets import hub_dataset

FINAL_FOLDER = "final"
DEFAULT_MAX_NEW_TOKENS = 256  # generation_config.json's, where the backbone's gave none
# On the card: the thought settings that describe the trained model (the think token's id says nothing to a reader).
CARD_THOUGHT_SETTINGS = tuple(name for name in SmolLMTRMConfig.thought_settings() if name != "think_token_id")


def standalone(model):
    """The model as a plain SmolLMTRMForCausalLM: a merged copy of a PEFT model (the trained one is untouched)."""
    if not is_peft(model):
        return model
    return copy.deepcopy(model).merge_and_unload()


def export_model(model, tokenizer, folder: str | os.PathLike, state_dict: dict | None = None) -> Path:
    """Save a folder AutoModelForCausalLM(trust_remote_code=True) loads: safetensors, config with auto_map, the two
    model files, tokenizer with chat template, generation_config.json. `state_dict`: the full weights of a sharded
    model (FSDP2 or ZeRO-3), gathered by `full_state_dict`."""
    folder = Path(folder)
    if state_dict is not None and is_peft(model):  # a sharded LoRA run: merge a whole copy rebuilt from the gather
        plain, state_dict = merged_from_state_dict(model, state_dict), None
    else:
        plain = standalone(model)
    if state_dict is not None:
        state_dict = without_tied_copies(plain, state_dict)
    with unsharded_class(plain):
        plain.save_pretrained(folder, state_dict=state_dict)
    scrub_config(folder / "config.json")
    tokenizer.save_pretrained(folder)
    decoding_defaults(plain.generation_config, tokenizer).save_pretrained(folder)
    return folder


def decoding_defaults(generation_config, tokenizer):
    """The generation config a user's generate()/pipeline() starts from: greedy, room for an answer after the
    thoughts, stopping at the chat turn's end and padding with the tokenizer's pad token."""
    generation_config.update(do_sample=False, max_new_tokens=generation_config.max_new_tokens or DEFAULT_MAX_NEW_TOKENS)
    if generation_config.eos_token_id is None:
        generation_config.eos_token_id = tokenizer.eos_token_id
    if generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id
    return generation_config


def scrub_config(path: Path) -> None:
    """Drop from a saved config what is true only of this machine or of the loading: the backbone's local path, and
    the GGUF `quantization_config` of a backbone read from a .gguf file (the weights saved are dequantized)."""
    config = json.loads(path.read_text())
    for section in (config, config.get("text_config") or {}):
        section.pop("_name_or_path", None)
        if (section.get("quantization_config") or {}).get("quant_method") == "gguf":
            del section["quantization_config"]
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def without_tied_copies(model, state_dict: dict) -> dict:
    """A gathered state dict holds a tied weight under each of its names as separate tensors, so save_pretrained would
    write the output embedding twice (FSDP2: 3.35 B saved parameters for SmolLM3-3B's 3.09 B). Keep the source name,
    once the copies are checked equal: a tie that training broke must not be saved as if it held."""
    kept = dict(state_dict)
    for target, source in model.all_tied_weights_keys.items():
        if target in kept and source in kept:
            if not torch.equal(kept[target], kept[source]):
                raise ValueError(f"{target} and {source} are tied in the config but differ after training: the tie was "
                                 "broken while sharded; the folder would not load as trained.")
            del kept[target]
    return kept


def merged_from_state_dict(model, state_dict: dict):
    """The LoRA-merged plain model of a PEFT model sharded by FSDP2 or ZeRO-3, rebuilt on the CPU from its gathered
    full state dict (a deepcopy would copy the shards). Only the main process, which holds the gather, calls this."""
    from peft import get_peft_model
    from transformers.modeling_utils import set_zero3_state

    base = model.get_base_model()
    # Under ZeRO-3, building a model enters deepspeed.zero.Init, a collective the other ranks (waiting at the barrier
    # after the gather) never join; transformers' flag for "zero.Init already entered" builds it whole, here only.
    with set_zero3_state():
        whole = get_peft_model(original_class(base)(base.config), model.peft_config[model.active_adapter])
    whole.load_state_dict({name: tensor.cpu() for name, tensor in state_dict.items()}, strict=True)
    return whole.merge_and_unload()


def original_class(model) -> type:
    """The model's class before FSDP2's `fully_shard` swapped in its generated `FSDP<Name>` subclass."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))


@contextlib.contextmanager
def unsharded_class(model):
    """FSDP2's `fully_shard` swaps the model's class for a generated `FSDP<Name>` subclass; save_pretrained would write
    that name into config.json's auto_map and copy torch's FSDP files as the remote code. Save as the original class."""
    from torch.distributed.fsdp import FSDPModule

    sharded_class = type(model)
    if not isinstance(model, FSDPModule):
        yield
        return
    model.__class__ = original_class(model)
    try:
        yield
    finally:
        model.__class__ = sharded_class


def full_state_dict(trainer) -> dict | None:
    """The full weights of a model sharded by FSDP or ZeRO-3 (a collective: every rank must call it; the tensors land
    on the main process), or None when the model is whole on every rank."""
    if trainer.is_fsdp_enabled:
        return trainer.accelerator.get_state_dict(trainer.model)
    if trainer.is_deepspeed_enabled:
        return trainer.accelerator.get_state_dict(trainer.deepspeed)
    return None



def finished_model(output_dir: str | os.PathLike) -> Path | None:
    """`<output_dir>/final` when a run there has finished: its model card is the last file `save_final` writes."""
    folder = Path(output_dir) / FINAL_FOLDER
    return folder if (folder / "README.md").is_file() else None


def save_final(trainer, trm_args, model_args, data_args, eval_results) -> Path:
    """Write `<output_dir>/final`: the whole model (merged, EMA weights where kept, gathered when sharded) with its
    tokenizer and card. Every rank calls it; the main process writes."""
    folder = Path(trainer.args.output_dir) / FINAL_FOLDER
    # Written whole beside it, then renamed: a run killed while saving leaves no `final/` that looks like a model.
    partial = folder.with_name(f".{FINAL_FOLDER}.partial")
    model = trainer.model
    if is_peft(model) and not trm_args.merge_on_save:
        raise ValueError("merge_on_save=False is not supported: the final folder must load with AutoModelForCausalLM "
                         "alone; the unmerged trainable weights are in every checkpoint's trainable.safetensors.")
    with trainer.ema_weights():
        state_dict = full_state_dict(trainer)  # every rank takes part in the gather
        if trainer.is_world_process_zero():
            shutil.rmtree(partial, ignore_errors=True)  # left by a run killed while saving
            export_model(model, trainer.processing_class, partial, state_dict)
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return folder
    config = thought_model(model).config
    args = trainer.args
    settings = {name: getattr(config, name) for name in CARD_THOUGHT_SETTINGS}
    state = trainer.state  # what the run did, not what it was allowed (num_train_epochs yields to max_steps)
    settings.update({"learning_rate": args.learning_rate, "steps": state.global_step,
                     "epochs": round(state.epoch or 0.0, 2), "batch_size": args.per_device_train_batch_size,
                     "gradient_accumulation_steps": args.gradient_accumulation_steps, "max_length": args.max_length,
                     "lora_r": model_args.lora_r if model_args.use_peft else None, "ema_decay": trm_args.ema_decay})
    write_model_card(partial, repo_id=args.hub_model_id or str(folder.resolve()),
                     base_model=hub_base_model(model_args.model_name_or_path),
                     dataset=hub_dataset(data_args.dataset_name), settings=settings, metrics=eval_results)
    if folder.exists():  # an earlier run's, unfinished by definition (a finished run never saves again)
        shutil.rmtree(folder)
    sync_tree(partial)
    os.replace(partial, folder)
    sync_folder(folder.parent)
    print(f"saved {folder}")
    return folder
