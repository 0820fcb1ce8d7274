"""The host's cost of a decoding step: SmolLMTRM's bookkeeping beside transformers' own decoding, in one run.

    python bench/decode_overhead.py                 # writes bench/results/decode_overhead.json

At batch 1 a large model's decoding step is bound by the host (Python, launches) rather than the GPU, so what the
wrapper adds per step (finding `<think>`, positions, masks, the cache's records, the outputs) shows directly in its
tokens/s. This bench isolates that cost: a backbone with SmolLM3-3B's 36 layers (its module count: per-step Python
work grows with it) at a width where the arithmetic is negligible, greedy `generate()` of 128 tokens after a 150-token
prompt, ms per step = (time for 129 tokens - time for 1) / 128, median of 5 (`--new_tokens`, `--repeats`), on
whatever device runs it (the CPU gives the same comparison). Arms: `hf` (transformers' `SmolLM3ForCausalLM` over the very same modules), `wrapper` (our
model decoding without `<think>`) and `after thoughts` (the prompt ends with `<think>`: the steps after K thoughts).
"""

import argparse
import time
from pathlib import Path

import torch
from common import DEVICE, THINK_ID, log, markdown_table, median, plain_backbone, write_results
from transformers import SmolLM3Config

from configuration_smollm_trm import SmolLMTRMConfig
from modeling_smollm_trm import SmolLMTRMForCausalLM

PROMPT, NEW_TOKENS, REPEATS = 150, 128, 5
# SmolLM3-3B's depth and head layout, a width at which the arithmetic is negligible beside the host's work.
SHAPE = dict(num_hidden_layers=36, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=1)


def build_models(num_latents: int):
    config = SmolLMTRMConfig(text_config=SmolLM3Config(**SHAPE), think_token_id=THINK_ID, num_latents=num_latents,
                             trm_hidden_size=32, trm_num_heads=2)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = SmolLMTRMForCausalLM(config).eval()
    return model, plain_backbone(model)


def step_ms(model, ids: torch.Tensor, new_tokens: int, repeats: int) -> float:
    def run(count: int) -> float:
        began = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=count,
                       min_new_tokens=count, do_sample=False, eos_token_id=None, pad_token_id=0)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - began

    run(4)  # warm-up
    return median([(run(new_tokens + 1) - run(1)) / new_tokens * 1e3 for _ in range(repeats)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_latents", type=int, default=256)
    parser.add_argument("--new_tokens", type=int, default=NEW_TOKENS, help="decoding steps timed per generation")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="generations per arm (the median is kept)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    model, plain = build_models(args.num_latents)
    rows = []
    with torch.no_grad():
        for batch in (1, 16):
            ids = torch.randint(1000, 100_000, (batch, PROMPT), generator=torch.Generator().manual_seed(0))
            thinking = ids.clone()
            thinking[:, -1] = THINK_ID

            def timed(model, prompt):
                return step_ms(model, prompt.to(DEVICE), args.new_tokens, args.repeats)

            hf = timed(plain, ids)
            for arm, ms in (("hf", hf), ("wrapper", timed(model, ids)), ("after thoughts", timed(model, thinking))):
                rows.append({"arm": arm, "batch": batch, "ms_per_step": ms, "overhead_ms": ms - hf,
                             "vs_hf": hf / ms})
                log(f"{arm}, batch {batch}: {ms:.3f} ms per step")
    path = write_results("decode_overhead", rows, {"shape": SHAPE, "num_latents": args.num_latents}, args.out)
    print(markdown_table(rows, ["arm", "batch", "ms_per_step", "overhead_ms", "vs_hf"]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
