"""Shared pieces of the benchmarks: the SmolLM3-3B-shaped random model, timing, the matrix-product ceiling, output.

Every benchmark measures SmolLMTRM beside the plain backbone in the same run, on the same GPU, and writes JSON with
the date, the versions and the device, plus a Markdown table printed last.
"""

import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from transformers import SmolLM3Config  # noqa: E402

from configuration_smollm_trm import SmolLMTRMConfig  # noqa: E402
from modeling_smollm_trm import SmolLMTRMForCausalLM  # noqa: E402

import os

THINK_ID = 128002  # `<think>` in SmolLM3's vocabulary
# The depth task's from-scratch backbone (experiments/configs/depth.yaml): SmolLM2's vocabulary and the two think tags
# the wrapper adds to it
DEPTH_VOCAB, DEPTH_THINK, DEPTH_END_THINK, DEPTH_EOS = 49154, 49152, 49153, 2
DEPTH_TRM_SETTINGS = ("num_latents", "trm_hidden_size", "trm_num_layers", "trm_num_heads", "n_latent_steps",
                      "n_cycles", "trm_qk_norm")
HBM_BYTES_PER_S = 4.8e12  # H200 datasheet bandwidth, for the decode bound
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# BENCH_TINY=1 shrinks the model so that the scripts can be smoke-tested on a CPU (the numbers then mean nothing).
TINY = os.environ.get("BENCH_TINY") == "1"
TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2)


def build_model(thought_mode: str = "trm", num_latents: int = 256, dtype=torch.bfloat16, **settings):
    """A randomly initialised SmolLM3-3B-shaped SmolLMTRM on the GPU (thought_mode="none" is the plain backbone)."""
    text = SmolLM3Config(**TINY_SHAPE) if TINY else SmolLM3Config()  # SmolLM3-3B's exact shape
    if TINY:
        settings = {"trm_hidden_size": 32, "trm_num_heads": 2, **settings}
        dtype = torch.float32
    config = SmolLMTRMConfig(text_config=text, think_token_id=THINK_ID, num_latents=num_latents,
                             thought_mode=thought_mode, **settings)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = SmolLMTRMForCausalLM(config)
    return model.to(dtype)


def depth_config() -> tuple[dict, dict]:
    """The depth task's backbone shape and the TRM settings its arms share (experiments/configs/depth.yaml)."""
    import yaml

    config = yaml.safe_load((ROOT / "experiments" / "configs" / "depth.yaml").read_text())
    return config["experiment"]["backbone"], {k: config["train"][k] for k in DEPTH_TRM_SETTINGS}


def build_depth_model(arm: dict, shape: dict, trm: dict) -> SmolLMTRMForCausalLM:
    """A randomly initialised model of the depth task's shape with an arm's thought settings, float32 on the GPU."""
    text = SmolLM3Config(**shape, vocab_size=DEPTH_VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=DEPTH_EOS)
    config = SmolLMTRMConfig(text_config=text, think_token_id=DEPTH_THINK, **{**trm, **arm})  # the arm's own win
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(DEVICE):
        return SmolLMTRMForCausalLM(config)


def plain_backbone(model):
    """transformers' own causal LM over the very same backbone modules as `model` (a SmolLMTRMForCausalLM)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(model.config.text_config)
    plain.model, plain.lm_head = model.model.language_model, model.lm_head
    return plain.eval()


def autocast():
    """bf16 autocast on the GPU, as the Trainer runs a bf16 run; none on the CPU."""
    return torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=DEVICE == "cuda")


def training_step(model, batch: dict, lr: float):
    """One optimizer step of `model` on `batch`, as a callable: forward under `autocast`, backward, gradient clipping
    at 1 and AdamW (fused on the GPU) over the trainable parameters."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, fused=DEVICE == "cuda")

    def step():
        with autocast():
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def backbone_params(model) -> int:
    return sum(p.numel() for n, p in model.get_base_model().named_parameters() if "lora_" not in n)  # a PeftModel


def matmul_tflops(size: int = 8192, repeats: int = 10) -> float:
    """The bf16 matrix-product rate this card reaches, measured now on random data (the MFU denominator)."""
    if TINY:
        size = 256
    a, b = (torch.randn(size, size, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    return 2 * size**3 * repeats / cuda_time(lambda: [a @ b for _ in range(repeats)]) / 1e12


def cuda_time(fn, warmup: int = 0) -> float:
    """Seconds that `fn` takes on the GPU, between CUDA events."""
    for _ in range(warmup):
        fn()
    if DEVICE == "cpu":
        began = time.perf_counter()
        fn()
        return time.perf_counter() - began
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3


def synchronized_now() -> float:
    """The host clock once the GPU has finished what was queued (for timing steps the caller does not launch)."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def kernel_profiler():
    """A torch profiler of the host's operations and, on the GPU, of its kernels."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if DEVICE == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return torch.profiler.profile(activities=activities)


def kernel_seconds(profile) -> float:
    """Seconds of GPU kernels in a finished profile."""
    kernels = [e for e in profile.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return sum(e.time_range.elapsed_us() for e in kernels) / 1e6


def reset_peak_memory() -> None:
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else float("nan")


def release_memory() -> None:
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def environment() -> dict:
    import transformers

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__}
    for name in ("trl", "peft", "accelerate", "datasets"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "versions": versions, "argv": sys.argv}


def write_results(name: str, rows: list[dict], extra: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps({**environment(), **extra, "rows": rows}, indent=2))
    return path


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
