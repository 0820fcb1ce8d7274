"""Does the halting loss collapse the thoughts? A diagnostic of the depth task's failures (docs/RESULTS.md).

The halting head reads the mean of y over the K thoughts, so the gradient of its BCE is the same for every thought.
This trains a freshly initialised TRM (the depth config's shape, random contexts) on the halting loss alone, with
targets 1 (answers right, as they mostly are once the backbone has learnt the task), twice from the same init: with
the head reading y as the model does (detached), and with the gradient flowing into y (the model before the fix).
It reports how alike the K thoughts of a row are (mean pairwise cosine) as training goes on.

    python -m experiments.halt_collapse        # CPU, about a minute; writes experiments/results/halt_collapse/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from configuration_smollm_trm import SmolLMTRMConfig
from modeling_smollm_trm import SmolLMTRMForCausalLM

OUTPUT_DIR = Path(__file__).resolve().parent / "results" / "halt_collapse"
ROWS, CONTEXT, BACKBONE_WIDTH = 8, 30, 128
HALT_LOSS_WEIGHT = 0.5  # SmolLMTRMConfig's default


def build_trm(seed: int):
    from transformers import SmolLM3Config

    torch.manual_seed(seed)
    text = SmolLM3Config(vocab_size=1000, hidden_size=BACKBONE_WIDTH, intermediate_size=384, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = SmolLMTRMConfig(text_config=text, think_token_id=5, num_latents=16, trm_hidden_size=256,
                             trm_num_layers=2, trm_num_heads=4, n_latent_steps=4, n_cycles=3)
    return SmolLMTRMForCausalLM(config).model.thoughts


def thought_similarity(thoughts: torch.Tensor) -> float:
    """Mean cosine between the K thoughts of a row, over rows (1.0: all K are the same vector)."""
    unit = F.normalize(thoughts.float(), dim=-1)
    cosines = unit @ unit.transpose(1, 2)
    K = cosines.shape[-1]
    return ((cosines.sum(dim=(1, 2)) - K) / (K * K - K)).mean().item()


def train_on_halting(into_y: bool, steps: int, seed: int) -> list[dict]:
    trm = build_trm(seed)
    optimizer = torch.optim.AdamW(trm.parameters(), lr=1e-3, weight_decay=0.1)
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(ROWS, CONTEXT, dtype=torch.bool)
    history = []
    for step in range(steps + 1):
        context = torch.randn(ROWS, CONTEXT, BACKBONE_WIDTH, generator=generator)
        x = trm.compressor(context, mask)
        carry = trm.deep_recursion(x, trm.initial_carry(x), trm.config.n_cycles)
        logit = trm.halt_head(carry.y.mean(dim=1)).squeeze(-1) if into_y else trm.halt_logit(carry.y)
        loss = HALT_LOSS_WEIGHT * F.binary_cross_entropy_with_logits(logit.float(), torch.ones(ROWS))
        if step % 25 == 0:
            history.append({"step": step, "halt_probability": torch.sigmoid(logit).mean().item(),
                            "thought_similarity": thought_similarity(trm.thoughts(carry.y))})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", type=Path, default=OUTPUT_DIR)
    args = parser.parse_args()
    runs = {"detached (the model)": train_on_halting(False, args.steps, args.seed),
            "into y (before the fix)": train_on_halting(True, args.steps, args.seed)}
    lines = ["| step | " + " | ".join(f"{name}: similarity, halt p" for name in runs) + " |",
             "|---|" + "---|" * len(runs)]
    for rows in zip(*runs.values()):
        cells = [f"{row['thought_similarity']:.3f}, {row['halt_probability']:.3f}" for row in rows]
        lines.append(f"| {rows[0]['step']} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "results.json").write_text(json.dumps({"steps": args.steps, "seed": args.seed,
                                                              "runs": runs}, indent=1))
    (args.output_dir / "results.md").write_text(
        "# The halting loss alone, on a fresh TRM (`python -m experiments.halt_collapse`)\n\n"
        "Mean cosine between the K = 16 thoughts of a row (1.000: one vector repeated), and the halting "
        "probability, while the TRM trains on the halting BCE with targets 1.\n\n" + table + "\n")


if __name__ == "__main__":
    main()
