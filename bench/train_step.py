"""One LoRA training step of a SmolLM3-3B-shaped model on the GPU: the plain backbone beside SmolLMTRM, one run.

    python bench/train_step.py                          # all arms, writes bench/results/train_step.json
    python bench/train_step.py --steps 5 --no-trainers  # only the manual-loop arms

Arms (random weights, bf16 under bf16 autocast as the Trainer runs it, sdpa, LoRA r=16 on every linear projection of
the backbone as train_sft.py applies it, the thought module trained in full; batch 8 x 1024 tokens):
  backbone                 plain backbone (thought_mode="none"), activation checkpointing off / on
  trm K=64 / K=256         SmolLMTRM, `<think>` at token 768 of each row (3/4 of it), default recursion (n=6, T=3)
  pause K=64 / K=256       the same positions with learned pause vectors: the difference to trm is the time spent
                           in the compressor and the recursion
  trm K=256 N_sup=2        deep supervision: every step's [thoughts; answer] scored
  trm / pause K=64 x4      four `<think>` per row (at tokens 256, 512, 768, 960 of 1024): the curriculum's rows
  ... (TRL SFTTrainer)     the plain backbone's step through TRL's own SFTTrainer (its fused LM head), the reference
  ... (TRMSFTTrainer)      our trainer, as train_sft.py runs it: the plain backbone and trm K=256
Manual-loop arms: forward + backward + clip + fused AdamW step, timed with CUDA events, median over --steps after 2
warm-up steps. Trainer arms: timed between the Trainer's on_step_begin and on_step_end, median after 2 warm-up steps.
`gpu_busy` is the share of the median step during which a kernel runs (kernel time of one profiled step over the
step's time): what is left is the host (Python, launches, synchronisation). Model FLOPs per backbone position: 2N
forward + 2N backward (LoRA: frozen weights need input gradients only) + attention (4 * layers * width * context per
position, causal); MFU is that over the matrix-product rate measured at the start of the same run.
"""

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from common import (
    DEVICE,
    THINK_ID,
    backbone_params,
    build_model,
    cuda_time,
    kernel_profiler,
    kernel_seconds,
    log,
    markdown_table,
    matmul_tflops,
    median,
    peak_memory_gib,
    release_memory,
    reset_peak_memory,
    synchronized_now,
    training_step,
    write_results,
)
from transformers import TrainerCallback

from smollm_trm.loading import apply_lora

LORA = SimpleNamespace(lora_target_modules=None, lora_modules_to_save=None, lora_r=16, lora_alpha=32,
                       lora_dropout=0.0, use_rslora=False, use_dora=False)  # apply_lora's model arguments
THINK_AT = {1: (0.75,), 4: (0.25, 0.5, 0.75, 0.9375)}  # where a row's `<think>` stand, as shares of its length
WARMUP_STEPS = 2


@dataclass
class Arm:
    name: str
    thought_mode: str
    num_latents: int = 256  # unused by the plain backbone, which reports K = 0
    checkpointing: bool = False
    thinks: int = 1
    settings: dict = field(default_factory=dict)
    trainer: str | None = None  # "trl" or "trm": timed through that trainer instead of the manual loop

    @property
    def K(self) -> int:
        return 0 if self.thought_mode == "none" else self.num_latents

    @property
    def thought_positions(self) -> int:
        return self.K * self.thinks


LOOP_ARMS = [
    Arm("backbone", "none"), Arm("backbone +ckpt", "none", checkpointing=True),
    Arm("trm K=64", "trm", 64), Arm("pause K=64", "pause", 64),
    Arm("trm K=256", "trm", 256), Arm("pause K=256", "pause", 256),
    Arm("trm K=256 N_sup=2", "trm", 256, settings={"n_supervision_steps": 2}),
    Arm("trm K=64 x4 <think>", "trm", 64, thinks=4), Arm("pause K=64 x4 <think>", "pause", 64, thinks=4),
]
TRAINER_ARMS = [Arm("backbone (TRL SFTTrainer)", "none", trainer="trl"),
                Arm("backbone (TRMSFTTrainer)", "none", trainer="trm"),
                Arm("trm K=256 (TRMSFTTrainer)", "trm", 256, trainer="trm")]


def make_ids(batch: int, length: int, arm: Arm, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(1000, 100_000, (batch, length), generator=torch.Generator().manual_seed(seed))
    if arm.thought_mode != "none":
        ids[:, [int(share * length) - 1 for share in THINK_AT[arm.thinks]]] = THINK_ID
    return ids


def lora_model(arm: Arm):
    model = build_model(arm.thought_mode, arm.num_latents, **arm.settings)
    model = apply_lora(model, LORA, thought_tokenizer(), [])
    if arm.checkpointing:
        model.base_model.model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def thought_tokenizer():
    """A stand-in tokenizer over the random ids: only padding and the think tags are looked up."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<think>": THINK_ID, "</think>": THINK_ID + 1}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, "<pad>")), pad_token="<pad>")


def flops_per_position(model, context: int) -> float:
    text = model.config.text_config
    return 4 * backbone_params(model) + 4 * text.num_hidden_layers * text.hidden_size * context


def time_manual_steps(model, batch: dict, steps: int) -> tuple[list[float], float]:
    step = training_step(model, batch, lr=1e-4)
    times = [cuda_time(step, warmup=WARMUP_STEPS if i == 0 else 0) for i in range(steps)]
    if DEVICE != "cuda":
        return times, float("nan")
    with kernel_profiler() as profile:
        step()
        torch.cuda.synchronize()
    return times, kernel_seconds(profile)


def result_row(arm: Arm, model, args, step_times: list[float], busy_s: float, peak_tflops: float) -> dict:
    step = median(step_times)
    tokens = args.batch * args.length
    positions = args.batch * (args.length + arm.thought_positions)
    flops = flops_per_position(model, positions // args.batch) * positions
    row = {"arm": arm.name, "K": arm.K, "thinks": arm.thinks if arm.K else 0, "checkpointing": arm.checkpointing,
           "step_s": step, "tokens_per_s": tokens / step, "positions_per_s": positions / step,
           "mfu": flops / step / (peak_tflops * 1e12), "gpu_busy": busy_s / step, "peak_mem_gib": peak_memory_gib(),
           "step_times_s": step_times}
    log(f"{arm.name}: {step:.3f} s/step, {row['positions_per_s']:.0f} positions/s, {row['peak_mem_gib']:.1f} GiB")
    return row


def run_loop_arm(arm: Arm, args, peak_tflops: float) -> dict:
    release_memory()
    reset_peak_memory()
    model = lora_model(arm)
    ids = make_ids(args.batch, args.length, arm).to(DEVICE)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    times, busy = time_manual_steps(model, batch, args.steps)
    row = result_row(arm, model, args, times, busy, peak_tflops)
    del model, batch
    return row


class StepTimer(TrainerCallback):
    """Each Trainer step's time between on_step_begin and on_step_end, and the kernel seconds of the first step after
    the warm-up, which runs under the profiler and is not timed."""

    def __init__(self):
        self.times, self.busy_s, self.began, self.profile = [], float("nan"), None, None

    def on_step_begin(self, args, state, control, **kwargs):
        if DEVICE == "cuda" and state.global_step == WARMUP_STEPS:
            self.profile = kernel_profiler()
            self.profile.__enter__()
        self.began = synchronized_now()

    def on_step_end(self, args, state, control, **kwargs):
        ended = synchronized_now()
        if self.profile is None:
            self.times.append(ended - self.began)
            return
        self.profile.__exit__(None, None, None)
        self.busy_s, self.profile = kernel_seconds(self.profile), None


def run_trainer_arm(arm: Arm, args, peak_tflops: float) -> dict:
    """The arm's step through TRL's SFTTrainer (plain backbone, TRL's LoRA and fused LM head) or TRMSFTTrainer."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from smollm_trm.trainer import TRMSFTTrainer

    release_memory()
    reset_peak_memory()
    total_steps = args.steps + WARMUP_STEPS + 1  # + the profiled step
    rows = make_ids(args.batch * total_steps, args.length, arm).tolist()
    config = SFTConfig(output_dir="/tmp/bench_trainer", per_device_train_batch_size=args.batch,
                       max_steps=total_steps, bf16=DEVICE == "cuda", gradient_checkpointing=False,
                       logging_steps=1000, save_strategy="no", report_to=[], max_length=args.length,
                       dataloader_num_workers=0, packing=False, padding_free=False,
                       use_cpu=DEVICE == "cpu")
    timer = StepTimer()
    common = dict(args=config, train_dataset=Dataset.from_dict({"input_ids": rows}),
                  processing_class=thought_tokenizer(), callbacks=[timer])
    if arm.trainer == "trl":
        trainer = SFTTrainer(model=build_model("none"), **common,
                             peft_config=LoraConfig(r=LORA.lora_r, lora_alpha=LORA.lora_alpha,
                                                    target_modules="all-linear"))
    else:
        trainer = TRMSFTTrainer(model=lora_model(arm), **common)
    trainer.train()
    row = result_row(arm, trainer.model, args, timer.times[WARMUP_STEPS:], timer.busy_s, peak_tflops)
    del trainer
    return row


def trm_share(rows: list[dict]) -> None:
    """Share of the TRM arm's step spent in the compressor and the recursion: its difference to pause."""
    by_arm = {row["arm"]: row for row in rows}
    for row in rows:
        pause = by_arm.get(row["arm"].replace("trm", "pause"))
        if row["arm"].startswith("trm") and pause:
            row["trm_share"] = 1 - pause["step_s"] / row["step_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-trainers", action="store_true", help="skip the TRL and TRMSFTTrainer arms")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    peak = matmul_tflops()
    log(f"bf16 matrix product: {peak:.0f} TFLOP/s")
    rows = [run_loop_arm(arm, args, peak) for arm in LOOP_ARMS]
    for arm in [] if args.no_trainers else TRAINER_ARMS:
        try:
            rows.append(run_trainer_arm(arm, args, peak))
        except Exception as error:  # a trainer arm must not cost the rest of the run
            log(f"{arm.name} failed: {type(error).__name__}: {error}")
    trm_share(rows)
    path = write_results("train_step", rows, {"matmul_tflops": peak, "batch": args.batch, "length": args.length},
                         args.out)
    print(markdown_table(rows, ["arm", "K", "thinks", "checkpointing", "step_s", "tokens_per_s", "positions_per_s",
                                "mfu", "gpu_busy", "peak_mem_gib", "trm_share"]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
