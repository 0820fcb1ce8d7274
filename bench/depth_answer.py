"""The depth task's time to answer (issue 14's time target): each recipe against written reasoning, in one run.

    python bench/depth_answer.py --compile_thoughts default     # writes bench/results/depth_answer.json

A randomly initialised model of the depth task's shape (experiments/configs/depth.yaml) per arm answers a depth-4
question with the tokens a trained model generates (session 20's generations: written reasoning 34 tokens; the TRM
7 when it writes its `<think>` itself, 4 when the prompt gives them), forced by a logits processor, so the timing
needs no trained model and every arm decodes exactly the same number of tokens on every run:
  cot                       the plain backbone writing its reasoning (the baseline)
  pause                     K pause thoughts per latent step, token mixtures snapped to tokens
  trm recipe                trm_jacobi_own_snap_decay: N_sup 5 steps of T 3 cycles, the backbone reading the thoughts
                            after every step
  trm cycles                trm_jacobi_own_snap_decay_cycles: N_sup 3 steps of T 2 cycles, the backbone reading the
                            thoughts after every cycle
each latent arm with its four latent steps emitted (the prompt ends with one `<think>`) and given (four in the prompt).
Per answer it counts the backbone's passes and the TRM network's calls (both sequential: each reads the one before),
and times generate() per answer at each batch size (median of --repeats, after --warmup runs).
"""

import argparse
from pathlib import Path

import torch
from common import DEPTH_END_THINK, DEPTH_EOS, DEPTH_THINK, DEVICE, build_depth_model, cuda_time, depth_config, log, \
    markdown_table, median, write_results
from transformers import LogitsProcessor, LogitsProcessorList

QUESTION = 30  # a depth-4 question in the chat template, in tokens
LATENT_STEPS, ANSWER, WRITTEN = 4, 2, 34  # latent steps at depth 4; answer digits; written reasoning's new tokens
JACOBI = dict(thought_output="token_mixture", thought_feedback=True, thought_next_token_prior=True,
              snap_thoughts=True, halt_threshold=1.0)
ARMS = {
    "cot": dict(thought_mode="none"),
    "pause": dict(thought_mode="pause", thought_output="token_mixture", snap_thoughts=True),
    "trm recipe": dict(thought_mode="trm", n_supervision_steps=5, **JACOBI),
    "trm cycles": dict(thought_mode="trm", n_supervision_steps=3, n_cycles=2, feedback_every_cycle=True, **JACOBI),
}


class ForcedTokens(LogitsProcessor):
    """Greedy decoding that writes `tokens`, one per step, whatever the model predicts."""

    def __init__(self, tokens: list[int], prompt_length: int):
        self.tokens, self.prompt_length = tokens, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.tokens[input_ids.shape[1] - self.prompt_length]] = 0.0
        return forced


def answer_plan(arm: str, latent: str) -> tuple[int, list[int]]:
    """(the `<think>` the prompt ends with, the tokens the model writes): written reasoning, or latent steps emitted
    (`<think>` x 3, `</think>`, the answer) or given (the prompt holds four)."""
    answer = [1000 + digit for digit in range(ANSWER)] + [DEPTH_EOS]
    if arm == "cot":
        return 1, [2000 + i for i in range(WRITTEN - len(answer) - 1)] + [DEPTH_END_THINK] + answer
    if latent == "emitted":
        return 1, [DEPTH_THINK] * (LATENT_STEPS - 1) + [DEPTH_END_THINK] + answer
    return LATENT_STEPS, [DEPTH_END_THINK] + answer


class CallCounter:
    """Counts the forward calls of the backbone and of the TRM's network while it is entered."""

    def __init__(self, model):
        self.calls = {"backbone_passes": 0, "trm_network_calls": 0}
        thoughts = getattr(model.model, "thoughts", None)
        modules = {"backbone_passes": model.model.language_model,
                   "trm_network_calls": getattr(thoughts, "net", None)}
        self.handles = [module.register_forward_hook(lambda *args, key=key: self.add(key))
                        for key, module in modules.items() if module is not None]

    def add(self, key: str) -> None:  # a forward hook's return value would replace the module's output
        self.calls[key] += 1

    def __enter__(self):
        return self.calls

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def prompt_ids(batch: int, thinks: int) -> torch.Tensor:
    """The same random question for every arm, ending in `thinks` `<think>`, on the device."""
    question = torch.randint(100, 40_000, (batch, QUESTION), generator=torch.Generator().manual_seed(0))
    return torch.cat([question, torch.full((batch, thinks), DEPTH_THINK)], dim=1).to(DEVICE)


def generate(model, prompt: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=len(tokens),
                              do_sample=False, pad_token_id=0, eos_token_id=DEPTH_EOS,
                              logits_processor=LogitsProcessorList([ForcedTokens(tokens, prompt.shape[1])]))


def run_arm(arm: str, latent: str, model, args) -> dict:
    thinks, tokens = answer_plan(arm, latent)
    with CallCounter(model) as calls:
        written = generate(model, prompt_ids(1, thinks), tokens)[0, QUESTION + thinks:].tolist()
    if written != tokens:
        raise RuntimeError(f"{arm}: generate() wrote {written}, not the forced {tokens}")
    row = {"arm": arm, "latent_steps": "-" if arm == "cot" else latent, "new_tokens": len(tokens), **calls}
    for batch in args.batch_sizes:
        prompt = prompt_ids(batch, thinks)  # built once: only generate() is timed
        times = [cuda_time(lambda: generate(model, prompt, tokens), warmup=args.warmup if i == 0 else 0)
                 for i in range(args.repeats)]
        row[f"s_per_answer_b{batch}"] = median(times) / batch
    log(f"{arm} ({row['latent_steps']}): {calls}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_sizes", default="1,300", help="comma-separated batch sizes to time")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile_thoughts", choices=["default", "reduce-overhead"],
                        help="torch.compile the TRM's networks, as eval --compile_thoughts does (default: eager)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    args.batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    shape, trm = depth_config()
    rows = []
    for arm, settings in ARMS.items():
        model = build_depth_model(settings, shape, trm).eval()
        if args.compile_thoughts and settings["thought_mode"] == "trm":
            model.compile_thoughts(args.compile_thoughts)
        for latent in ["-"] if arm == "cot" else ["emitted", "given"]:
            rows.append(run_arm(arm, latent, model, args))
    cot = rows[0]
    for row in rows:
        for batch in args.batch_sizes:
            row[f"speedup_b{batch}"] = cot[f"s_per_answer_b{batch}"] / row[f"s_per_answer_b{batch}"]
    path = write_results("depth_answer", rows, {"backbone": shape, "trm": trm, "compile_thoughts":
                                                args.compile_thoughts, "batch_sizes": args.batch_sizes}, args.out)
    columns = ["arm", "latent_steps", "new_tokens", "backbone_passes", "trm_network_calls"]
    for batch in args.batch_sizes:
        columns += [f"s_per_answer_b{batch}", f"speedup_b{batch}"]
    print(markdown_table(rows, columns))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
