"""One LoRA training step of a SmolLM3-3B-shaped model on the GPU: the plain backbone beside SmolLMTRM, one run.

    python bench/train_step.py                      # all arms, writes bench/results/train_step.json
    python bench/train_step.py --steps 5 --no-trl   # skip the TRL SFTTrainer cross-check arm

Arms (random weights, bf16, sdpa, LoRA r=16 on every linear projection of the backbone, batch 8 x 1024 tokens):
  backbone            plain backbone (thought_mode="none"), activation checkpointing off / on
  backbone (TRL)      the same step through TRL's own SFTTrainer, timed by a callback (cross-check)
  trm K=64 / K=256    SmolLMTRM, `<think>` at token 768 of each row, default recursion (n=6, T=3)
  pause K=64 / K=256  the same positions with learned pause vectors: the difference to trm is the time spent in
                      the compressor and the recursion
A step is forward + backward + AdamW step, timed with CUDA events, median over --steps after 2 warm-up steps.
Model FLOPs per backbone position: 2N forward + 2N backward (LoRA: frozen weights need input gradients only) +
attention (4 * layers * width * context per position, causal); MFU is that over the matrix-product rate measured
at the start of the same run.
"""

import argparse
from pathlib import Path

import torch
from common import (
    DEVICE,
    THINK_ID,
    backbone_params,
    build_model,
    cuda_time,
    log,
    markdown_table,
    matmul_tflops,
    median,
    peak_memory_gib,
    release_memory,
    reset_peak_memory,
    write_results,
)
from peft import LoraConfig, get_peft_model

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
THINK_COLUMN = 767


def make_batch(batch: int, length: int, with_think: bool) -> dict:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 100_000, (batch, length), generator=generator)
    if with_think:
        ids[:, THINK_COLUMN] = THINK_ID
    ids = ids.to(DEVICE)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def lora_model(thought_mode: str, num_latents: int, checkpointing: bool):
    model = build_model(thought_mode, num_latents)
    keep = None if thought_mode == "none" else ["thoughts"]  # the thought module trains in full
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS,
                                             modules_to_save=keep))
    if checkpointing:
        model.base_model.model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def flops_per_position(model, context: int) -> float:
    text = model.config.text_config
    return 4 * backbone_params(model) + 4 * text.num_hidden_layers * text.hidden_size * context


def time_manual_steps(model, batch: dict, steps: int) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)

    def step():
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return [cuda_time(step, warmup=2 if i == 0 else 0) for i in range(steps)]


def run_arm(name, thought_mode, num_latents, checkpointing, args, peak_tflops) -> dict:
    release_memory()
    reset_peak_memory()
    model = lora_model(thought_mode, num_latents, checkpointing)
    batch = make_batch(args.batch, args.length, thought_mode != "none")
    times = time_manual_steps(model, batch, args.steps)
    step = median(times)
    tokens = args.batch * args.length
    positions = args.batch * (args.length + (num_latents if thought_mode != "none" else 0))
    flops = flops_per_position(model, positions // args.batch) * positions
    row = {"arm": name, "K": num_latents if thought_mode != "none" else 0, "checkpointing": checkpointing,
           "step_s": step, "tokens_per_s": tokens / step, "positions_per_s": positions / step,
           "mfu": flops / step / (peak_tflops * 1e12), "peak_mem_gib": peak_memory_gib(),
           "step_times_s": times}
    log(f"{name}: {step:.3f} s/step, {row['positions_per_s']:.0f} positions/s, {row['peak_mem_gib']:.1f} GiB")
    del model, batch
    return row


def run_trl_arm(args, peak_tflops) -> dict:
    """The plain backbone's step through TRL's own SFTTrainer, timed between on_step_begin and on_step_end."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.start = [], None

        def on_step_begin(self, *unused, **kwargs):
            torch.cuda.synchronize()
            self.start = torch.cuda.Event(enable_timing=True)
            self.start.record()

        def on_step_end(self, *unused, **kwargs):
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            torch.cuda.synchronize()
            self.times.append(self.start.elapsed_time(end) / 1e3)

    release_memory()
    reset_peak_memory()
    model = build_model("none")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0}, "<pad>")),
                                        pad_token="<pad>")
    ids = make_batch(args.batch * (args.steps + 2), args.length, False)["input_ids"].cpu().tolist()
    timer = StepTimer()
    config = SFTConfig(output_dir="/tmp/bench_trl", per_device_train_batch_size=args.batch, max_steps=args.steps + 2,
                       bf16=True, gradient_checkpointing=False, logging_steps=1000, save_strategy="no",
                       report_to=[], max_length=args.length, dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_dict({"input_ids": ids}),
                         processing_class=tokenizer, callbacks=[timer],
                         peft_config=LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS))
    trainer.train()
    step = median(timer.times[2:])
    tokens = args.batch * args.length
    row = {"arm": "backbone (TRL SFTTrainer)", "K": 0, "checkpointing": False, "step_s": step,
           "tokens_per_s": tokens / step, "positions_per_s": tokens / step,
           "mfu": flops_per_position(trainer.model, args.length) * tokens / step / (peak_tflops * 1e12),
           "peak_mem_gib": peak_memory_gib(), "step_times_s": timer.times}
    log(f"TRL: {step:.3f} s/step")
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
    parser.add_argument("--no-trl", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    peak = matmul_tflops()
    log(f"bf16 matrix product: {peak:.0f} TFLOP/s")
    # K is unused by the plain backbone; it is reported as 0.
    arms = [("backbone", "none", 256, False), ("backbone +ckpt", "none", 256, True),
            ("trm K=64", "trm", 64, False), ("pause K=64", "pause", 64, False),
            ("trm K=256", "trm", 256, False), ("pause K=256", "pause", 256, False)]
    rows = [run_arm(name, mode, k, ckpt, args, peak) for name, mode, k, ckpt in arms]
    if not args.no_trl:
        try:
            rows.insert(1, run_trl_arm(args, peak))
        except Exception as error:  # the cross-check must not cost the rest of the run
            log(f"TRL arm failed: {type(error).__name__}: {error}")
    trm_share(rows)
    path = write_results("train_step", rows, {"matmul_tflops": peak, "batch": args.batch, "length": args.length},
                         args.out)
    print(markdown_table(rows, ["arm", "K", "checkpointing", "step_s", "tokens_per_s", "positions_per_s", "mfu",
                                "peak_mem_gib", "trm_share"]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
