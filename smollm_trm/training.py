"""Setting up a training run: checks of the settings, reporting, the model, LoRA, the data and the trainer."""

from __future__ import annotations

import logging
import os
import tempfile

from smollm_trm.attention import skip_cudnn_attention
from smollm_trm.callbacks import CurriculumStages, StopAtTimeLimit, StopOnNonFiniteLoss
from smollm_trm.loading import apply_lora, load_model, thought_model
from smollm_trm.named_datasets import resolve_dataset
from smollm_trm.prepared_cache import cache_key, load_prepared, save_prepared
from smollm_trm.sft_data import prepare_sft_data
from smollm_trm.trainer import TRMSFTTrainer, check_padded_rows

logger = logging.getLogger(__name__)


def check_training_args(training_args) -> None:
    check_padded_rows(training_args)
    check_writable(training_args.output_dir)
    if training_args.max_length is None:
        raise ValueError("max_length must be set: rows are validated against it with thoughts counted, so that TRL "
                         "never truncates.")


def check_writable(folder: str) -> None:
    """Fail before training, not at the first save (with `save_strategy no`, after the whole run)."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ValueError(f"output_dir {folder!r} cannot be written ({err.strerror}); checkpoints and the model go "
                         "there: choose a writable folder.") from None


def configure_reporting(report_to: list[str]) -> None:
    if "wandb" in report_to and not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")  # no key (or no network): keep the run local, sync later


def check_sharded_lora(trains_new_token_rows: bool, fsdp: bool) -> None:
    """LoRA that trains new think-token rows cannot run under FSDP2: PEFT wraps the tied embed_tokens / lm_head pair
    (TrainableTokensWrapper), which hides the tie from accelerate, so it would shard the shared weight twice."""
    if trains_new_token_rows and fsdp:
        raise ValueError("--use_peft under FSDP needs a tokenizer that already has <think> and </think> (SmolLM3's "
                         "has them): the backbone's tokenizer lacks them, and LoRA training of the new rows hides the "
                         "tied embeddings from FSDP2. Use configs/accelerate/ddp.yaml, or train without "
                         "--use_peft.")


def compile_thoughts(model, mode: str) -> None:
    """`--compile_thoughts`: torch.compile the model's TRM networks."""
    compile_networks = getattr(thought_model(model), "compile_thoughts", None)
    if compile_networks is None:
        raise ValueError("--compile_thoughts: this model runs its own saved code, which cannot compile its thoughts; "
                         "drop the flag.")
    if not compile_networks(mode):
        logger.warning("--compile_thoughts: this model has no TRM network to compile (thought_mode %r).",
                       thought_model(model).config.thought_mode)


def build_trainer(data_args, training_args, model_args, trm_args):
    """(trainer, prepared data): the model loaded or wrapped, LoRA applied, the data validated at max_length."""
    from transformers import EarlyStoppingCallback, set_seed
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    check_training_args(training_args)
    configure_reporting(training_args.report_to)
    skip_cudnn_attention()
    callbacks = [StopOnNonFiniteLoss()]
    if trm_args.time_limit_s is not None:  # first: the limit counts loading and preparing the data too
        callbacks.append(StopAtTimeLimit(trm_args.time_limit_s))
    # Seeded before the model is built: the new TRM, the new think-token rows (frozen under LoRA, only their delta
    # trains) and LoRA's init must come out the same when a resumed run rebuilds the model.
    set_seed(training_args.seed)
    model, tokenizer, added = load_model(model_args, trm_args, training_args.trust_remote_code)
    distill = trm_args.distill_weight > 0
    if distill and model.config.thought_mode == "none":
        raise ValueError("--distill_weight needs thoughts to distil into: thought_mode 'none' has none.")
    probe = model.config.probe_loss_weight > 0
    if probe and model.config.thought_mode == "none":
        raise ValueError("--probe_loss_weight decodes the thoughts: thought_mode 'none' has none.")
    forcing = trm_args.thought_teacher_forcing > 0
    if forcing and (model.config.thought_mode == "none" or data_args.reasoning != "curriculum"):
        raise ValueError("--thought_teacher_forcing gives latent steps' thoughts their written tokens: it needs "
                         f"thoughts and --reasoning curriculum (got thought_mode={model.config.thought_mode!r}, "
                         f"reasoning={data_args.reasoning!r}).")
    scores_every_step = model.config.forced_lm_scope == "all" and probe  # the probe's labels carry every step
    if model.config.forced_lm_loss_weight > 0 and not (forcing or scores_every_step):
        raise ValueError("--forced_lm_loss_weight scores the backbone on the latent steps' written tokens: it needs "
                         "--thought_teacher_forcing > 0 (the forced steps), or --forced_lm_scope all with "
                         "--probe_loss_weight > 0 (every step).")
    if trm_args.train_n_cycles_max is not None and model.config.thought_mode != "trm":
        raise ValueError("--train_n_cycles_max draws the TRM's n_cycles per batch: it needs thought_mode 'trm', got "
                         f"{model.config.thought_mode!r}.")
    if model.config.thought_output == "token_mixture" and is_deepspeed_zero3_enabled():  # the model's own check
        raise ValueError("--thought_output token_mixture reads the whole embedding matrix, which DeepSpeed ZeRO-3 "
                         "partitions: train it with DDP or FSDP2.")  # would come only at the first step
    if data_args.reasoning == "curriculum":
        CurriculumStages(data_args, training_args.max_steps)  # its schedule's errors, before preparing the data
    with training_args.main_process_first(desc="writing and tokenizing the data"):  # one writer of arith's files
        resolved = resolve_dataset(data_args, training_args.output_dir)
        preparation = {"num_latents": model.config.num_latents, "teacher": distill, "probe": probe or forcing}
        key = cache_key(resolved, training_args, tokenizer, preparation)
        kept = load_prepared(training_args.output_dir, key)
        if kept is None:
            data = prepare_sft_data(resolved, tokenizer, preparation["num_latents"], training_args.max_length,
                                    teacher=distill, probe=preparation["probe"], report_dir=training_args.output_dir,
                                    num_proc=training_args.dataset_num_proc)
        else:
            data, tokenized = kept
    if model_args.use_peft:
        model = apply_lora(model, model_args, tokenizer, added)
    if trm_args.compile_thoughts is not None:  # after LoRA, whose copy of the thought module is the one that trains
        compile_thoughts(model, trm_args.compile_thoughts)
    if trm_args.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=trm_args.early_stopping_patience))
    curriculum = data_args if data_args.reasoning == "curriculum" else None
    dataset_kwargs = training_args.dataset_kwargs
    if kept is not None:  # TRL's preparation is in the kept rows already
        training_args.dataset_kwargs = {**(dataset_kwargs or {}), "skip_prepare_dataset": True}
    try:
        trainer = TRMSFTTrainer(model=model, args=training_args,
                                train_dataset=data.train if kept is None else tokenized["train"],
                                eval_dataset=data.eval if kept is None else tokenized["eval"],
                                processing_class=tokenizer, callbacks=callbacks, ema_decay=trm_args.ema_decay,
                                curriculum=curriculum, distill_weight=trm_args.distill_weight,
                                teacher_loss_weight=trm_args.teacher_loss_weight,
                                thought_teacher_forcing=trm_args.thought_teacher_forcing,
                                train_n_cycles_max=trm_args.train_n_cycles_max)
    finally:
        training_args.dataset_kwargs = dataset_kwargs
    if kept is None and trainer.is_world_process_zero():
        save_prepared(training_args.output_dir, key, data, trainer.train_dataset, trainer.eval_dataset)
    check_sharded_lora(model_args.use_peft and bool(added), trainer.is_fsdp_enabled)
    return trainer, data
