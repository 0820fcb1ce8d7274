"""How a SmolLMTRM LoRA training step grows with context length, K and recursion depth, beside the backbone.

    python bench/scaling.py           # writes bench/results/scaling.json and bench/results/scaling.png

Random SmolLM3-3B-shaped weights, bf16, sdpa, LoRA r=16 on all linear projections; one step = forward + backward
+ AdamW step (bench/train_step.py's), median of 3 after a warm-up.
  context  batch 1, L = 512 ... 8192 tokens, `<think>` 64 tokens before the end, K=256; backbone alone beside it
  K        batch 4 x 1024 tokens, K = 16 ... 512
  depth    batch 4 x 1024 tokens, K=256, n*T = 6 ... 48 (n_latent_steps, n_cycles)
"""

import argparse
from pathlib import Path

import matplotlib
import torch
from common import (
    DEVICE,
    THINK_ID,
    log,
    markdown_table,
    median,
    peak_memory_gib,
    release_memory,
    reset_peak_memory,
    write_results,
)
from train_step import lora_model, time_manual_steps

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def batch_for(batch: int, length: int, think_column: int | None) -> dict:
    ids = torch.randint(1000, 100_000, (batch, length), generator=torch.Generator().manual_seed(0))
    if think_column is not None:
        ids[:, think_column] = THINK_ID
    ids = ids.to(DEVICE)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def measure(model, batch: dict) -> tuple[float, float]:
    reset_peak_memory()
    step = median(time_manual_steps(model, batch, 3))
    return step, peak_memory_gib()


def sweep_context(rows: list[dict], lengths: list[int]) -> None:
    for mode in ("none", "trm"):
        model = lora_model(mode, 256, checkpointing=False)
        for length in lengths:
            step, memory = measure(model, batch_for(1, length, length - 64 if mode == "trm" else None))
            rows.append({"sweep": "context", "arm": mode, "x": length, "step_s": step, "peak_mem_gib": memory})
            log(f"context {mode} L={length}: {step:.3f} s, {memory:.1f} GiB")
        del model
        release_memory()


def sweep_latents(rows: list[dict], latents: list[int]) -> None:
    for K in latents:
        model = lora_model("trm", K, checkpointing=False)
        step, memory = measure(model, batch_for(4, 1024, 767))
        rows.append({"sweep": "K", "arm": "trm", "x": K, "step_s": step, "peak_mem_gib": memory})
        log(f"K={K}: {step:.3f} s, {memory:.1f} GiB")
        del model
        release_memory()


def sweep_depth(rows: list[dict], depths: list[str]) -> None:
    model = lora_model("trm", 256, checkpointing=False)
    for n, T in (map(int, depth.split("x")) for depth in depths):
        model.base_model.model.config.n_latent_steps = n
        model.base_model.model.config.n_cycles = T
        step, memory = measure(model, batch_for(4, 1024, 767))
        rows.append({"sweep": "depth", "arm": "trm", "x": n * T, "n": n, "T": T, "step_s": step,
                     "peak_mem_gib": memory})
        log(f"n={n} T={T}: {step:.3f} s, {memory:.1f} GiB")


def plot(rows: list[dict], path: Path) -> None:
    figure, axes = plt.subplots(2, 3, figsize=(13, 7))
    for column, (sweep, label) in enumerate([("context", "context length (tokens)"), ("K", "K (thoughts)"),
                                             ("depth", "recursion depth n*T")]):
        for arm in ("none", "trm"):
            points = [r for r in rows if r["sweep"] == sweep and r["arm"] == arm]
            if not points:
                continue
            name = "backbone" if arm == "none" else "SmolLMTRM"
            for row_axis, key in enumerate(("step_s", "peak_mem_gib")):
                axes[row_axis, column].plot([p["x"] for p in points], [p[key] for p in points], "o-", label=name)
                axes[row_axis, column].set_xlabel(label)
                axes[row_axis, column].set_ylabel("step time (s)" if key == "step_s" else "peak memory (GiB)")
                axes[row_axis, column].legend()
    for axis in axes[:, 0]:
        axis.set_xscale("log", base=2)
    figure.suptitle("SmolLMTRM LoRA step on one H200 (SmolLM3-3B shape, bf16)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--latents", type=int, nargs="+", default=[16, 64, 128, 256, 512])
    parser.add_argument("--depths", nargs="+", default=["2x3", "4x3", "6x3", "8x3", "6x6", "8x6"],
                        help="n x T pairs")
    args = parser.parse_args()
    rows: list[dict] = []
    sweep_context(rows, args.contexts)
    sweep_latents(rows, args.latents)
    sweep_depth(rows, args.depths)
    path = write_results("scaling", rows, {}, args.out)
    plot(rows, args.out / "scaling.png")
    print(markdown_table(rows, ["sweep", "arm", "x", "step_s", "peak_mem_gib"]))
    print(f"wrote {path} and scaling.png")


if __name__ == "__main__":
    main()
