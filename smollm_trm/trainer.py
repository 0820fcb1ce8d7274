"""`TRMSFTTrainer`: TRL's `SFTTrainer` for SmolLM+TRM (the model's own loss, TRM metrics, EMA, loadable checkpoints)."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time

import torch
import torch.nn.functional as F
from torch.distributed.tensor import DTensor
from trl import SFTTrainer
from trl.kernels import ChunkedLogProbFunction
from trl.trainer.utils import maybe_gather_lm_head_ctx

from modeling_smollm_trm import IGNORE_INDEX, THINK_TOKENS
from smollm_trm.callbacks import CurriculumStages, TRMWeightsEMA
from smollm_trm.curriculum import SPARE_COLUMN, STAGE_COLUMN, CurriculumArguments, CurriculumSampler
from smollm_trm.checkpoints import (TRAINABLE_FILE, UNIVERSAL_LATEST_FILE, check_zero_world_size, rotate_checkpoints,
                                    write_manifest)
from smollm_trm.export import export_model
from smollm_trm.loading import is_peft, thought_model
from smollm_trm.sft_data import THOUGHT_LABELS_COLUMN

logger = logging.getLogger(__name__)

END_THINK_TOKEN = THINK_TOKENS[1]
TEACHER_COLUMNS = ("teacher_input_ids", "teacher_labels")  # smollm_trm.sft_data's teacher rows
TEACHER_INPUTS = ("teacher_input_ids", "teacher_attention_mask", "teacher_labels")  # a collated batch's
ROW_EXTRAS = (*TEACHER_COLUMNS, THOUGHT_LABELS_COLUMN, SPARE_COLUMN)  # row columns that TRL's collator does not know
VOCAB_TILE = 32768  # vocabulary columns per tile of the fused loss, as in TRL's own fused LM head


def trl_token_scorer(hidden: torch.Tensor, weight: torch.Tensor,
                     targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's `fused_token_scorer`: TRL's chunked log-prob kernel (Triton on CUDA, torch tiles elsewhere) scores
    hidden states (N, D) against the LM head's weight (V, D) tile by tile, so the (N, V) logits never exist, and gives
    each target's log-probability and whether it is the top-1."""
    if isinstance(weight, DTensor):  # FSDP2 shards the head: gather it once for every tile
        weight = weight.full_tensor()
    with maybe_gather_lm_head_ctx(weight):  # ZeRO-3 partitions it outside its module's forward
        log_probability, _, _, _, top1 = ChunkedLogProbFunction.apply(hidden, weight, None, targets, 1.0, VOCAB_TILE,
                                                                      None, 1.0, ("is_top1",))
    return log_probability, top1


def check_padded_rows(training_args) -> None:
    """Packed or padding-free batches would let thoughts cross the sequences packed into a row."""
    if training_args.packing or training_args.padding_free:
        raise ValueError(
            f"packing={training_args.packing}, padding_free={training_args.padding_free}: SmolLMTRM needs padded "
            "rows (thoughts would cross packed sequences); set both to False."
        )


class TRMSFTTrainer(SFTTrainer):
    """SFTTrainer that optimises the model's own loss (thoughts, deep supervision, halting), logs TRM metrics, keeps
    an optional EMA of the TRM weights, and writes checkpoints that load with AutoModelForCausalLM."""

    _tag_names = ["trl", "sft", "smollm-trm"]

    def __init__(self, *args, ema_decay: float | None = None, curriculum: CurriculumArguments | None = None,
                 distill_weight: float = 0.0, teacher_loss_weight: float = 1.0, thought_teacher_forcing: float = 0.0,
                 train_n_cycles_max: int | None = None, **kwargs):
        """`curriculum`: train the stages of `--reasoning curriculum` rows in order (their `curriculum_stage`
        column). `distill_weight` / `teacher_loss_weight`: with teacher rows (`teacher_input_ids`), the weights of
        the hidden-state distillation towards the written-reasoning teacher and of the teacher's own CE.
        `thought_teacher_forcing`: the share of labelled latent steps (`thought_labels`) whose thoughts are, in
        training, the written step's tokens (see `_forced_thoughts`). `train_n_cycles_max`: each training batch's
        n_cycles is drawn from 1 .. this (see `_training_n_cycles`)."""
        if kwargs.get("args") is not None:
            check_padded_rows(kwargs["args"])
        super().__init__(*args, **kwargs)
        self.distill_weight, self.teacher_loss_weight = distill_weight, teacher_loss_weight
        self.thought_teacher_forcing = thought_teacher_forcing
        self.train_n_cycles_max = train_n_cycles_max
        self._last_batch_time: float | None = None
        if set(ROW_EXTRAS) & set(getattr(self.train_dataset, "column_names", None) or []):
            config = thought_model(self.model).config
            self.data_collator = TRMDataCollator(self.data_collator, config.num_latents, config.think_token_id)
        self.curriculum = None
        if curriculum is not None:
            if STAGE_COLUMN not in self.train_dataset.column_names:
                raise ValueError(f"A curriculum needs train rows with a {STAGE_COLUMN!r} column (--reasoning "
                                 "curriculum).")
            # Read now: the Trainer drops columns the model does not take before it builds the sampler.
            self.row_stages = self.train_dataset[STAGE_COLUMN]
            self.curriculum = CurriculumStages(curriculum, self.args.max_steps)
            self.add_callback(self.curriculum)
        self.thought_lm = thought_model(self.model)
        # TRL patched `forward` with a fused LM head that runs the backbone alone, i.e. without thoughts. The model
        # takes TRL's kernel instead, for the columns its own loss scores.
        self.thought_lm.__dict__.pop("forward", None)
        self.thought_lm.fused_token_scorer = trl_token_scorer
        self.end_think_id = self.processing_class.convert_tokens_to_ids(END_THINK_TOKEN)
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
        teacher = {key: inputs[key] for key in TEACHER_INPUTS if key in inputs}
        model_inputs = ("input_ids", "attention_mask", "labels", "position_ids", THOUGHT_LABELS_COLUMN)
        inputs = {key: inputs[key] for key in model_inputs if key in inputs}
        distill = bool(teacher) and self.distill_weight > 0
        training_only = {}  # what only a training step passes: forced thoughts, a drawn n_cycles
        if mode == "train" and self.thought_teacher_forcing > 0 and THOUGHT_LABELS_COLUMN in inputs:
            training_only["forced_thoughts"] = self._forced_thoughts(inputs[THOUGHT_LABELS_COLUMN])
        if mode == "train" and self.train_n_cycles_max is not None:
            training_only["n_cycles"] = self._training_n_cycles()
        outputs = model(**inputs, **training_only, use_cache=False, num_items_in_batch=num_items_in_batch,
                        output_hidden_states=distill)
        loss = outputs.loss
        # Per-micro-batch means (the halting BCE, the teacher's terms) are averaged over the accumulation steps, as
        # TRL does for MoE aux losses.
        accumulated = self.model.training and num_items_in_batch is not None
        steps = self.current_gradient_accumulation_steps if accumulated else 1
        if num_items_in_batch is not None:
            # lm_loss is already divided by the tokens of all accumulated micro-batches.
            loss = outputs.lm_loss
            if self.args.average_tokens_across_devices:
                # lm_loss is divided by the tokens of every rank while DDP / FSDP average gradients over ranks: scale
                # it back. The halting BCE is a per-rank mean, which that average already gets right.
                loss = loss * self.accelerator.num_processes
            probe_loss, forced_lm_loss = (None if value is None else value / steps
                                          for value in (outputs.probe_loss, outputs.forced_lm_loss))
            loss = self.thought_lm.combine_losses(loss, outputs.halt_loss / steps, probe_loss, forced_lm_loss)
        if teacher:
            loss = loss + self._teacher_terms(model, mode, inputs, outputs, teacher) / steps
        self._record_metrics(mode, inputs, outputs, num_items_in_batch, training_only.get("forced_thoughts"))
        if mode == "train":
            self._record_batch_time()
        if self.curriculum is not None:
            self._metrics[mode]["curriculum_stage"].append(float(self.curriculum.stage_of(self.state.global_step)))
        return (loss, outputs) if return_outputs else loss

    def _training_n_cycles(self) -> int:
        """This optimizer step's n_cycles, uniform over 1 .. `train_n_cycles_max`: drawn from the seed and the step,
        so every rank (whose sharded modules must run the same calls) and a resumed run draw the same."""
        return random.Random(f"{self.args.seed}:{self.state.global_step}").randint(1, self.train_n_cycles_max)

    def _forced_thoughts(self, thought_labels: torch.Tensor) -> torch.Tensor:
        """[B, S, K] the step probe's labels of the latent steps drawn for teacher forcing (each with probability
        `thought_teacher_forcing`), -100 elsewhere: those steps' thoughts are their written tokens. The answer then
        learns to read the thought positions as the step, which it cannot learn from thoughts that are still wrong,
        while the probe teaches the thought module to write them; at evaluation every step is the module's own."""
        drawn = torch.rand(thought_labels.shape[:2], device=thought_labels.device) < self.thought_teacher_forcing
        return thought_labels.masked_fill(~drawn[..., None], IGNORE_INDEX)

    def _teacher_terms(self, model, mode: str, inputs: dict, outputs, teacher: dict) -> torch.Tensor:
        """Self-distillation (CODI, arXiv 2502.21074): the same model reads each row with its written reasoning and no
        thoughts (the teacher, whose CE trains too), and the student's hidden states of every layer at the position
        that predicts the first answer token (`</think>`'s) are pulled to the teacher's, which are detached."""
        taught = model(input_ids=teacher["teacher_input_ids"], attention_mask=teacher["teacher_attention_mask"],
                       labels=teacher["teacher_labels"], insert_thoughts=False, use_cache=False,
                       output_hidden_states=self.distill_weight > 0)
        terms = self.teacher_loss_weight * taught.lm_loss
        self._metrics[mode]["teacher_lm_loss"].append(self.accelerator.gather_for_metrics(
            taught.lm_loss.detach().float()[None]).mean().item())
        if self.distill_weight > 0:
            distill = hidden_state_distillation(
                outputs.hidden_states, last_position(inputs["input_ids"], self.end_think_id),
                taught.hidden_states, last_position(teacher["teacher_input_ids"], self.end_think_id))
            terms = terms + self.distill_weight * distill
            self._metrics[mode]["distill_loss"].append(self.accelerator.gather_for_metrics(
                distill.detach().float()[None]).mean().item())
        return terms

    def _record_metrics(self, mode: str, inputs: dict, outputs, num_items_in_batch,
                        forced_thoughts: torch.Tensor | None = None) -> None:
        metrics = self._metrics[mode]
        labels = inputs["labels"][:, 1:]  # column i predicts label i + 1
        scored = labels != IGNORE_INDEX
        # Answer tokens: after `</think>`, i.e. what the thoughts are for (not the closing tag itself).
        in_answer = scored & ((inputs["input_ids"][:, :-1] == self.end_think_id).long().cumsum(dim=1) > 0)
        if getattr(outputs, "token_correct", None) is not None:
            correct = outputs.token_correct[:, :-1]
        else:  # a folder saved before the loss ran on the scored columns alone, running its own code, has logits
            correct = outputs.logits[:, :-1].argmax(dim=-1) == labels
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
            if getattr(outputs, name, None) is not None:  # a folder saved by older code may lack the newer ones
                values[name] = getattr(outputs, name).detach()
        if outputs.probe_loss is not None:
            labelled = (inputs[THOUGHT_LABELS_COLUMN] != IGNORE_INDEX).sum()
            self._record_counted(metrics, {"probe_loss": outputs.probe_loss, "probe_accuracy": outputs.probe_accuracy},
                                 labelled)
        if getattr(outputs, "forced_lm_loss", None) is not None:  # a folder saved by older code has none
            choose = getattr(self.thought_lm, "forced_lm_targets", None)  # older code scores the forced thoughts only
            targets = forced_thoughts if choose is None else choose(inputs.get(THOUGHT_LABELS_COLUMN), forced_thoughts)
            self._record_counted(metrics, {"forced_lm_loss": outputs.forced_lm_loss}, (targets != IGNORE_INDEX).sum())
        if outputs.thought_norm is not None:  # the thoughts should stay on the scale of the tokens they sit among
            with torch.no_grad():
                tokens = self.thought_lm.get_input_embeddings()(inputs["input_ids"][inputs["attention_mask"].bool()])
                values["thought_scale"] = outputs.thought_norm.detach() / tokens.float().norm(dim=-1).mean()
        for name, value in values.items():
            metrics[name].append(self.accelerator.gather_for_metrics(value.float()[None]).mean().item())
        if mode == "train":
            self._total_train_tokens += self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
        metrics["num_tokens"] = [self._total_train_tokens]

    def _record_batch_time(self) -> None:
        """`seconds_per_batch`: the wall time from one training batch to the next (forward, backward, optimizer step,
        data, host waits; an evaluation or a save in between counts too), so each log shows the speed of its stage."""
        now = time.monotonic()
        if self._last_batch_time is not None:
            self._metrics["train"]["seconds_per_batch"].append(now - self._last_batch_time)
        self._last_batch_time = now

    def _record_counted(self, metrics, values: dict[str, torch.Tensor], count: torch.Tensor) -> None:
        """Means over `count` items (labelled thoughts for the step probe, forced tokens for the forced loss), pooled
        over every rank by their counts; a batch without any (stage 0 of the curriculum, a batch with no step drawn
        for forcing) adds nothing, rather than a 0 that would drag the logged mean down."""
        count = count.float()
        totals = torch.stack([value.detach().float() * count for value in values.values()] + [count])
        totals = self.accelerator.gather_for_metrics(totals[None]).view(-1, len(values) + 1).sum(dim=0)
        if totals[-1] > 0:
            for name, total in zip(values, totals):
                metrics[name].append((total / totals[-1]).item())

    # --------------------------------------------------------------------------------------- curriculum and teacher

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = list(dict.fromkeys([*self._signature_columns, *ROW_EXTRAS]))

    def _get_train_sampler(self, train_dataset=None):
        if self.curriculum is None:
            return super()._get_train_sampler(train_dataset)
        args, schedule = self.args, self.curriculum
        # accelerate hands each process every world_size-th batch of this one order
        rows_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        return CurriculumSampler(self.row_stages, rows_per_step, args.max_steps, schedule.steps_per_stage,
                                 schedule.num_stages, schedule.mix, args.seed, schedule.first_stage)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The Trainer's schedule, times the curriculum's factor: its ramp at the start of each latent stage
        (`--curriculum_stage_warmup_steps`) and its final decay (`--curriculum_last_stage_decay`), so that the
        logged learning rate is the one used."""
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if self.curriculum is None or not self.curriculum.adjusts_rate:
            return scheduler
        if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            raise ValueError(f"--curriculum_stage_warmup_steps and --curriculum_last_stage_decay scale the schedule "
                             f"by a factor per step, which needs a LambdaLR schedule; "
                             f"lr_scheduler_type={self.args.lr_scheduler_type!r} gives {type(scheduler).__name__}.")
        factor = self.curriculum.lr_factor
        scheduler.lr_lambdas = [lambda step, scheduled=scheduled: scheduled(step) * factor(step)
                                for scheduled in scheduler.lr_lambdas]
        # LambdaLR set the current rates when it was built, before the factor: a run that starts inside a ramp
        # (`--curriculum_first_stage`) must take its first step at the ramped rate.
        for group, base_rate, rate in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base_rate * rate(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
        return scheduler

    # ----------------------------------------------------------------------------------------------- checkpoints

    def create_model_card(self, *args, **kwargs) -> None:
        """No card at the output root: TRL writes one there at every checkpoint, for a model that is not there
        (`base_model: None`, `pipeline(model="None")`); the model's card is `final/README.md`, from `save_final`."""

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, then its manifest (written last: what makes it complete), then the rotation,
        by step and among complete checkpoints only (the Trainer's own rotation, by time, runs before any manifest
        and could delete complete checkpoints for a partial one)."""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        run_dir = self._get_output_dir(trial=trial)
        self.accelerator.wait_for_everyone()  # every rank's shards are written
        if self.args.should_save:
            write_manifest(os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"))
            rotate_checkpoints(run_dir, limit, self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------------------------------ EMA: eval and save

    def ema_weights(self):
        """Context with the EMA weights in place of the online ones (no-op without EMA): evaluation and saving."""
        return self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext()

    def evaluate(self, *args, **kwargs):
        with self.ema_weights():
            return super().evaluate(*args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        with self.ema_weights():
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


class TRMDataCollator:
    """TRL's collator plus what smollm_trm.sft_data's rows may carry beside it: the distillation teacher's tokens
    (`teacher_input_ids`, `teacher_attention_mask`, `teacher_labels`, padded by the same collator), the step probe's
    `thought_labels`, padded with -100 to [B, most <think> in a row, K], and the curriculum's spare latent steps
    (`spare_latent_steps`), whose `<think>` tokens it leaves unscored."""

    def __init__(self, collator, num_latents: int, think_id: int):
        self.collator, self.num_latents, self.think_id = collator, num_latents, think_id

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.collator([{k: v for k, v in example.items() if k not in ROW_EXTRAS} for example in examples])
        if TEACHER_COLUMNS[0] in examples[0]:
            taught = self.collator([{"input_ids": e["teacher_input_ids"], "labels": e["teacher_labels"]}
                                    for e in examples])
            batch.update(teacher_input_ids=taught["input_ids"], teacher_attention_mask=taught["attention_mask"],
                         teacher_labels=taught["labels"])
        if THOUGHT_LABELS_COLUMN in examples[0]:
            batch[THOUGHT_LABELS_COLUMN] = self._thought_labels([e[THOUGHT_LABELS_COLUMN] for e in examples])
        if SPARE_COLUMN in examples[0]:
            self._unscore_spare_thinks(batch, [e[SPARE_COLUMN] for e in examples])
        return batch

    def _unscore_spare_thinks(self, batch: dict, spares: list[int]) -> None:
        """A row's spare `<think>` (its last `spare`) are not labels: the model learns to close after the row's last
        step from the rows without spares, and what a spare step holds from the rows with them."""
        for row, spare in enumerate(spares):
            if spare:
                thinks = (batch["input_ids"][row] == self.think_id).nonzero().flatten()
                batch["labels"][row, thinks[-spare:]] = IGNORE_INDEX

    def _thought_labels(self, rows: list[list[list[int]]]) -> torch.Tensor:
        labels = torch.full((len(rows), max(map(len, rows)), self.num_latents), IGNORE_INDEX, dtype=torch.long)
        for row, thinks in enumerate(rows):
            for think, ids in enumerate(thinks):
                labels[row, think, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return labels


def last_position(input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
    """(B,) the column of each row's last `token_id` (the row must hold one)."""
    columns = torch.arange(input_ids.shape[1], device=input_ids.device)
    return torch.where(input_ids == token_id, columns, -1).amax(dim=1)


def hidden_state_distillation(student: tuple, student_positions: torch.Tensor, teacher: tuple,
                              teacher_positions: torch.Tensor) -> torch.Tensor:
    """Mean over layers of SmoothL1(student, teacher) at one position per row, each layer divided by the std of the
    teacher's states there (as CODI normalises), the teacher detached."""
    rows = torch.arange(student_positions.shape[0], device=student_positions.device)
    losses = []
    for student_layer, teacher_layer in zip(student, teacher):
        target = teacher_layer[rows, teacher_positions].detach().float()  # (B, D)
        prediction = student_layer[rows, student_positions].float()
        losses.append(F.smooth_l1_loss(prediction, target) / target.std().clamp(min=1e-6))
    return torch.stack(losses).mean()
