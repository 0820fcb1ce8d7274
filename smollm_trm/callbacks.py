"""Trainer callbacks: an EMA of the thought module's weights, and a stop on a non-finite loss."""

from __future__ import annotations

import contextlib
import math
import os

import torch
from transformers import TrainerCallback

from smollm_trm.loading import is_thought_parameter

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
