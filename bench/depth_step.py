"""The depth experiment's training step (experiments/configs/depth.yaml), eager and with the TRM compiled, in one run.

    python bench/depth_step.py                 # writes bench/results/depth_step.json

The from-scratch 17M backbone at batch 256 is bound by kernel launches, not arithmetic: a row of the curriculum's
last stage holds four `<think>`, and with N_sup 3 each runs T x (n + 1) = 15 calls of the TRM's network per
supervision step, most of a step's kernels. This times one optimizer step (forward, backward, clip, AdamW; bf16
autocast as the Trainer runs it) on rows shaped like that stage's (a 24-token question, four `<think>`, the answer),
median of --steps after warm-up, for:
  none                      the plain backbone on the same rows' written reasoning (the baseline, no thoughts)
  pause_tokens              pause thoughts as token mixtures, with the step probe
  trm_tokens_feedback3      the TRM arm of RESULTS' plan (N_sup 3, feedback, token mixture, probe), eager
  ... compiled              the same with `compile_thoughts()` (torch.compile of the TRM's network), default mode
  ... compiled (cudagraphs) the same in mode "reduce-overhead" (CUDA graphs)
  ... (no cuDNN)           none and the compiled TRM arm with cuDNN taken out of sdpa's kernels, as train_sft.py and
                            eval run (smollm_trm.attention): the others keep torch's own choice, cuDNN included
Each arm may fail alone (its error is printed) without costing the others. For the eager arms, one forward's
operations (ATen kernels, views excluded) are also counted by where they run: the TRM's network, its compressor, the
backbone, the rest; on a launch-bound GPU their number, not their size, sets the step's time.
"""

import argparse
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from common import DEPTH_END_THINK as END_THINK
from common import DEPTH_THINK as THINK
from common import DEVICE, autocast, build_depth_model, cuda_time, depth_config, log, markdown_table, median, \
    peak_memory_gib, release_memory, reset_peak_memory, training_step, write_results

from modeling_smollm_trm import LatentAttentionCompressor, TinyRecursiveNetwork

QUESTION, STEP_TOKENS, THINKS, ANSWER = 24, 9, 4, 4  # a depth-4 row: "12*3=36" lines of up to ~9 tokens
ARMS = {
    "none": dict(thought_mode="none"),
    "pause_tokens": dict(thought_mode="pause", thought_output="token_mixture", probe_loss_weight=1.0),
    "trm_tokens_feedback3": dict(thought_mode="trm", thought_output="token_mixture", probe_loss_weight=1.0,
                                 n_supervision_steps=3, thought_feedback=True),
}
COMPILED = {"trm_tokens_feedback3 compiled": "default", "trm_tokens_feedback3 compiled (cudagraphs)": "reduce-overhead"}
WITHOUT_CUDNN = {"none (no cuDNN)": ("none", None),
                 "trm_tokens_feedback3 compiled (no cuDNN)": ("trm_tokens_feedback3", "default")}


def make_batch(batch: int, thoughts: bool, K: int) -> dict:
    """Rows of the last curriculum stage (question, four `<think>`, `</think>`, answer) or, for the plain backbone,
    the same question with its four written steps."""
    generator = torch.Generator().manual_seed(0)
    question = torch.randint(100, 40_000, (batch, QUESTION), generator=generator)
    answer = torch.randint(100, 40_000, (batch, ANSWER), generator=generator)
    if thoughts:
        middle = torch.full((batch, THINKS), THINK)
    else:
        middle = torch.randint(100, 40_000, (batch, THINKS * STEP_TOKENS), generator=generator)
    ids = torch.cat([question, middle, torch.full((batch, 1), END_THINK), answer], dim=1)
    labels = ids.clone()
    labels[:, :QUESTION] = -100
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    if thoughts:
        inputs["thought_labels"] = torch.randint(100, 40_000, (batch, THINKS, K), generator=generator)
        inputs["thought_labels"][..., STEP_TOKENS:] = -100  # a step's tokens label its first thoughts only
    return {key: value.to(DEVICE) for key, value in inputs.items()}


class OperationCounter(TorchDispatchMode):
    """Counts the ATen operations run (views excluded) by the region of the model they run in."""

    REGIONS = {TinyRecursiveNetwork: "trm_network", LatentAttentionCompressor: "compressor"}

    def __init__(self, model):
        super().__init__()
        self.counts, self.stack = Counter(), ["rest"]
        regions = [(module, name) for module in model.modules() for kind, name in self.REGIONS.items()
                   if isinstance(module, kind)] + [(model.model.language_model, "backbone")]
        self.handles = []
        for module, name in regions:
            self.handles.append(module.register_forward_pre_hook(lambda *args, name=name: self.enter(name)))
            self.handles.append(module.register_forward_hook(lambda *args: self.leave()))

    def enter(self, region: str) -> None:
        self.stack.append(region)

    def leave(self) -> None:  # a forward hook's return value would replace the module's output
        self.stack.pop()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.counts[self.stack[-1]] += 1
        return func(*args, **(kwargs or {}))

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        return super().__exit__(*exc)


def count_operations(model, batch: dict) -> dict:
    """One training forward's operations by region, and the TRM network's share of them."""
    with OperationCounter(model) as counter, autocast():
        model(**batch)
    counts = dict(counter.counts)
    return {"forward_ops": sum(counts.values()), "forward_ops_by_region": counts,
            "trm_network_op_share": counts.get("trm_network", 0) / sum(counts.values())}


def time_steps(model, batch: dict, steps: int, warmup: int) -> list[float]:
    step = training_step(model, batch, lr=1e-3)
    return [cuda_time(step, warmup=warmup if i == 0 else 0) for i in range(steps)]


def run_arm(name: str, settings: dict, compile_mode: str | None, cudnn: bool, args, shape: dict, trm: dict) -> dict:
    release_memory()
    reset_peak_memory()
    # sdpa's kernel is chosen when a graph is traced, and a new model would reuse the last arm's compiled graph
    torch._dynamo.reset()
    torch.backends.cuda.enable_cudnn_sdp(cudnn)
    model = build_depth_model(settings, shape, trm).train()
    if compile_mode is not None:
        model.compile_thoughts(mode=compile_mode)
    batch = make_batch(args.batch, settings["thought_mode"] != "none", trm["num_latents"])
    times = time_steps(model, batch, args.steps, warmup=args.warmup)
    step = median(times)
    row = {"arm": name, "compile": compile_mode or "eager", "cudnn_attention": cudnn, "step_s": step,
           "steps_per_s": 1 / step, "peak_mem_gib": peak_memory_gib(), "step_times_s": times}
    if compile_mode is None:
        row.update(count_operations(model, batch))
    log(f"{name}: {step:.3f} s/step")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--arms", help="comma-separated subset of the arms (default: all)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    shape, trm = depth_config()
    arms = [(name, settings, None, True) for name, settings in ARMS.items()]
    arms += [(name, ARMS["trm_tokens_feedback3"], mode, True) for name, mode in COMPILED.items()]
    arms += [(name, ARMS[arm], mode, False) for name, (arm, mode) in WITHOUT_CUDNN.items()]
    if args.arms:
        wanted = args.arms.split(",")
        unknown = sorted(set(wanted) - {arm[0] for arm in arms})
        if unknown:
            parser.error(f"unknown arms {unknown}; the arms are {[arm[0] for arm in arms]}")
        arms = [arm for arm in arms if arm[0] in wanted]
    rows = []
    for name, settings, mode, cudnn in arms:
        try:
            rows.append(run_arm(name, settings, mode, cudnn, args, shape, trm))
        except Exception as error:  # one arm's failure (a compiler's, say) must not cost the others
            log(f"{name} failed: {type(error).__name__}: {error}")
    eager = next((row["step_s"] for row in rows if row["arm"] == "trm_tokens_feedback3"), None)
    for row in rows:
        if eager and row["arm"].startswith("trm"):
            row["speedup_vs_eager"] = eager / row["step_s"]
    path = write_results("depth_step", rows, {"batch": args.batch, "backbone": shape, "trm": trm}, args.out)
    print(markdown_table(rows, ["arm", "compile", "cudnn_attention", "step_s", "steps_per_s", "speedup_vs_eager",
                                "forward_ops", "trm_network_op_share", "peak_mem_gib"]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
