"""Trainer callbacks: an EMA of the thought module's weights, a stop on a non-finite loss, and the curriculum's
stage changes."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time

import torch
from transformers import TrainerCallback

from smollm_trm.curriculum import CurriculumArguments, stage_at
from smollm_trm.loading import is_thought_parameter

logger = logging.getLogger(__name__)

EMA_FILE = "trm_ema.safetensors"


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


class StopAtTimeLimit(TrainerCallback):
    """Stop cleanly once `seconds` have passed since this callback was made, saving a checkpoint at that step, so that
    a job with a wall-clock limit (a GPU lease, a cluster slot) ends resumable instead of killed; rerunning the command
    resumes there. Made before the model and the data are loaded, it counts their time too: what a wall-clock limit
    counts, and on a resumed run preparing the data can take minutes."""

    def __init__(self, seconds: float):
        if not seconds > 0:
            raise ValueError(f"time_limit_s must be > 0, got {seconds}.")
        self.seconds, self.started, self.stopped = seconds, time.monotonic(), False

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() - self.started >= self.seconds and state.global_step < state.max_steps:
            control.should_save = control.should_training_stop = self.stopped = True


class CurriculumStages(TrainerCallback):
    """The curriculum's schedule over optimizer steps (`smollm_trm.curriculum`), and at each new stage a fresh
    optimizer state when asked: the moments of the previous stage's objective would steer the first updates."""

    def __init__(self, curriculum: CurriculumArguments, max_steps: int):
        if max_steps is None or max_steps < 1:
            raise ValueError("A curriculum runs over --max_steps optimizer steps: set it (epochs are not supported).")
        self.num_stages, self.first_stage = curriculum.curriculum_stages, curriculum.curriculum_first_stage
        stages_before_last = self.num_stages - self.first_stage
        self.steps_per_stage = curriculum.curriculum_steps_per_stage or max(1, max_steps // (stages_before_last + 1))
        # 0 is a run cut where the last stage begins, to be continued there (no optimizer state is lost at a stage)
        self.last_stage_steps = max_steps - stages_before_last * self.steps_per_stage
        if self.last_stage_steps < 0:
            raise ValueError(f"curriculum_steps_per_stage={self.steps_per_stage} x {stages_before_last} stages leaves "
                             f"no step of max_steps={max_steps} for the last stage.")
        self.mix, self.reset_optimizer = curriculum.curriculum_mix, curriculum.curriculum_reset_optimizer
        self.warmup_steps = curriculum.curriculum_stage_warmup_steps
        if self.warmup_steps > self.steps_per_stage:
            raise ValueError(f"curriculum_stage_warmup_steps={self.warmup_steps} is longer than a stage "
                             f"({self.steps_per_stage} steps).")
        self.decay_steps = round(curriculum.curriculum_last_stage_decay * self.last_stage_steps)
        self.decay_start = max_steps - self.decay_steps
        self.stage: int | None = None

    def stage_of(self, step: int) -> int:
        return stage_at(step, self.steps_per_stage, self.num_stages, self.first_stage)

    def lr_factor(self, step: int) -> float:
        """The factor on the schedule's learning rate at optimizer step `step` (0-based): a linear ramp over the
        first `warmup_steps` of each latent stage (stage 0 has the schedule's own warm-up), times a cosine from 1
        towards 0 over the last `decay_steps` of training (the first of them still at 1, as in transformers' cosine
        schedule); 1 elsewhere."""
        return self.stage_ramp(step) * self.final_decay(step)

    def stage_ramp(self, step: int) -> float:
        stage = self.stage_of(step)
        if stage == 0 or not self.warmup_steps:
            return 1.0
        stage_start = (stage - self.first_stage) * self.steps_per_stage
        return min(1.0, (step - stage_start + 1) / self.warmup_steps)

    def final_decay(self, step: int) -> float:
        if not self.decay_steps or step < self.decay_start:
            return 1.0
        # the scheduler also asks for the step after the last one: 0 there, not beyond the cosine's trough
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - self.decay_start) / self.decay_steps)))

    @property
    def adjusts_rate(self) -> bool:
        return bool(self.warmup_steps or self.decay_steps)

    def on_train_begin(self, args, state, control, **kwargs):
        self.stage = self.stage_of(state.global_step)  # a resumed run restored its stage's optimizer state
        if not self.last_stage_steps:
            logger.warning("max_steps=%d ends where the last stage begins: this run trains stages %d-%d only; continue "
                           "it with --curriculum_first_stage %d.", state.max_steps, self.first_stage,
                           self.num_stages - 1, self.num_stages)

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        stage = self.stage_of(state.global_step)
        if stage != self.stage and self.reset_optimizer and optimizer is not None:
            optimizer.state.clear()  # AdamW starts its moments and step count afresh
        self.stage = stage
