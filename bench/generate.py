"""Time to answer on the GPU: chain of thought written by the backbone beside K latent thoughts, in one run.

    python bench/generate.py          # writes bench/results/generate.json

A GSM8K-length prompt (150 tokens) and a 16-token answer, batch 1 and 16, random SmolLM3-3B-shaped weights, bf16,
sdpa, greedy `generate()` with the KV cache (lengths forced with min_new_tokens, no EOS):
  cot   the plain backbone writes 256 tokens of reasoning, then the answer (272 new tokens)
  trm   the prompt ends with `<think>`; K=256 thoughts are computed and cached in the prefill; 16 new tokens
  hf    the same chain of thought through transformers' own SmolLM3ForCausalLM with the same weights: the
        backbone's own decoding, against which the wrapper's per-step bookkeeping is measured
Decode tokens/s = (new tokens - 1) / (time for all of them - time for the first one), per row.
The memory-bandwidth bound at batch 1 is the weights' bytes over 4.8 TB/s per token.
"""

import argparse
from pathlib import Path

import torch
from common import (
    DEVICE,
    HBM_BYTES_PER_S,
    THINK_ID,
    build_model,
    cuda_time,
    log,
    markdown_table,
    median,
    plain_backbone,
    write_results,
)

PROMPT, ANSWER, REASONING = 150, 16, 256


def prompt_ids(batch: int, think: bool) -> torch.Tensor:
    ids = torch.randint(1000, 100_000, (batch, PROMPT), generator=torch.Generator().manual_seed(0))
    if think:
        ids[:, -1] = THINK_ID
    return ids.to(DEVICE)


def timed_generate(model, ids, new_tokens: int, repeats: int = 3, **kwargs) -> float:
    def run():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0, **kwargs)

    return median([cuda_time(run, warmup=1 if i == 0 else 0) for i in range(repeats)])


def measure(model, name: str, batch: int, new_tokens: int, think: bool) -> dict:
    ids = prompt_ids(batch, think)
    total = timed_generate(model, ids, new_tokens)
    first = timed_generate(model, ids, 1)
    decode = batch * (new_tokens - 1) / (total - first)
    row = {"arm": name, "batch": batch, "new_tokens": new_tokens, "time_to_answer_s": total,
           "prefill_s": first, "decode_tokens_per_s": decode, "decode_tokens_per_s_per_row": decode / batch}
    log(f"{name} batch {batch}: {total:.3f} s to answer, {decode / batch:.1f} tokens/s per row")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    rows = []
    model = build_model("trm", num_latents=256).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.model.parameters())
    weight_bytes += model.lm_head.weight.numel() * model.lm_head.weight.element_size() * (
        not model.config.tie_word_embeddings)
    bound = HBM_BYTES_PER_S / weight_bytes
    plain = plain_backbone(model)
    with torch.no_grad():
        for batch in (1, 16):
            rows.append(measure(plain, "hf (SmolLM3ForCausalLM, 256 reasoning tokens)", batch, REASONING + ANSWER,
                                False))
            rows.append(measure(model, "cot (wrapper, 256 reasoning tokens)", batch, REASONING + ANSWER, False))
            rows.append(measure(model, "trm (K=256 thoughts)", batch, ANSWER, True))
    for batch in (1, 16):
        hf, cot, trm = (r for r in rows if r["batch"] == batch)
        trm["speedup_vs_cot"] = hf["time_to_answer_s"] / trm["time_to_answer_s"]
        for row in (cot, trm):
            row["decode_ratio_vs_hf"] = row["decode_tokens_per_s"] / hf["decode_tokens_per_s"]
    path = write_results("generate", rows, {"bandwidth_bound_tokens_per_s_batch1": bound,
                                            "weight_bytes": weight_bytes}, args.out)
    print(markdown_table(rows, ["arm", "batch", "new_tokens", "time_to_answer_s", "prefill_s",
                                "decode_tokens_per_s_per_row", "speedup_vs_cot", "decode_ratio_vs_hf"]))
    print(f"bandwidth bound at batch 1: {bound:.0f} tokens/s; wrote {path}")


if __name__ == "__main__":
    main()
