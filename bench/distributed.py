"""Multi-GPU proof: the same 30-step SFT run of train_sft.py on 1 GPU, on 2 GPUs with DDP, with FSDP2 and (when
`import deepspeed` works) with ZeRO-3; loss curves compared, tokens/s and peak memory per GPU, an FSDP2 checkpoint
resumed on 1 GPU, and each sharded run's final folder loaded on the CPU to generate. `--runs` picks runs, among them
the LoRA ones (lora-1gpu, lora-fsdp2, lora-zero3: adapters on the backbone, the TRM in full).

    # 2 GPUs, about 5 minutes; JSON and logs under --out, a Markdown table printed last.
    python3 bench/distributed.py --out bench/results/distributed
    # ZeRO-3 and LoRA runs, each beside the 1-GPU run it is compared with
    python3 bench/distributed.py --out bench/results/distributed --runs zero3 lora-fsdp2 lora-zero3
    # SmolLM3-3B's own shape in full (K = 256, the TRM of configs/smollm3_3b.yaml); no checkpoint / resume run
    python3 bench/distributed.py --out /tmp/dist-3b --shape 3b --runs 1gpu ddp fsdp2 zero3
    # the same runs in fp32: where a bf16 curve leaves the tolerance, is it rounding or logic?
    python3 bench/distributed.py --out /tmp/dist-fp32 --precision fp32 --runs zero3
    # CPU smoke test (gloo, tiny model, 3 steps, fp32; FSDP2 is skipped: accelerate applies it only on GPUs).
    python3 bench/distributed.py --out /tmp/dist-smoke --smoke

Model (`--shape reduced`, the default): a randomly initialised SmolLMTRM on a reduced SmolLM3 shape, 8 decoder
layers of width 1024 (16 heads, 4 KV heads, MLP 4096), SmolLM3's vocabulary size 128256 (embeddings tied), K = 64
thoughts, the default TRM (d = 512, 2 blocks, n = 6, T = 3): 267 M parameters, trained in full (no LoRA) so that
FSDP2 / ZeRO-3 shard everything. `--shape 3b`: SmolLM3-3B's shape, 3.09 B parameters (see SHAPES).
Data: the arith task (`smollm_trm.arith.make_arith`), a BPE tokenizer trained here on it (no network on the GPU machine).
Every run: global batch 8 (8 rows on 1 GPU, 4 per GPU on 2), seed 0, bf16 (or `--precision fp32`), AdamW lr 3e-4,
30 steps.

Tolerance of the loss comparison (`LOSS_TOLERANCE`, max |loss_run - loss_1gpu| over the 30 steps): the runs start from
the same weights and see the same rows in the same steps; they differ in summation order (all-reduce vs one device), in
padding (a row is padded to its micro-batch's longest, which moves only the rounding: padding is masked) and, under
FSDP2 and ZeRO-3, in where bf16 rounding happens (FSDP2's mixed precision policy casts parameters; DeepSpeed's bf16 mode
runs on bf16 weights beside fp32 master weights, reducing gradients in fp32 as deepspeed_zero3.json asks). bf16 keeps 8
significant bits, a relative error of u = 2^-8 ~ 0.004 per rounding; on a loss of ~12 nats at step 1 that is ~0.05, and
30 Adam steps can amplify it a little, so we allow 0.15 nats over the curve (and report the step-1 gap, expected below
0.05, separately). A missing gradient synchronisation, a loss scaled by the world size or ranks training on different
weights show as a curve that drifts apart by far more within 30 steps; the resume check compares steps 16-30 of the
resumed run with the uninterrupted FSDP2 run under the same tolerance. The tolerance assumes a stable run: where the
loss spikes (the random 3B model at this learning rate) a spike amplifies rounding into different trajectories for every
strategy, DDP included, and only the step-1 gap is a test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ACCELERATE_CONFIGS = ROOT / "configs" / "accelerate"
# Multicast over NVLink (NVLS) is off on the lent machines; set for every subprocess.
NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
LOSS_TOLERANCE = 0.15
FIRST_STEP_TOLERANCE = 0.05
WARMUP_STEPS = 5  # left out of the throughput
GLOBAL_BATCH = 8
# --shape: (SmolLM3 config fields, train_sft.py flags of every run). "3b" is SmolLM3-3B's own shape (SmolLM3Config's
# defaults: 36 layers of width 2048, MLP 11008, 16 heads, 4 KV heads, every 4th layer without RoPE) with the TRM of
# configs/smollm3_3b.yaml, and a 10-step warm-up. The random 3B model still spikes with it (4.5 -> 10.6 at step 5 and
# 4.0 -> 12.0 over steps 8-10 on one GPU), so its curves measure memory and speed, not agreement (docs/DISTRIBUTED.md).
SHAPES = {
    "reduced": (dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=8, num_attention_heads=16,
                     num_key_value_heads=4, vocab_size=128256, max_position_embeddings=4096),
                ["--num_latents", "64"]),
    "3b": (dict(vocab_size=128256, max_position_embeddings=4096),
           ["--num_latents", "256", "--trm_hidden_size", "512", "--trm_num_layers", "2", "--trm_num_heads", "8",
            "--n_latent_steps", "6", "--n_cycles", "3", "--lr_scheduler_type", "constant_with_warmup",
            "--warmup_steps", "10"]),
}
SMOKE_SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=600, max_position_embeddings=1024)
# LoRA runs: adapters on the backbone's linear layers, the TRM trained in full (as train_sft.py's --use_peft does),
# at the full runs' learning rate: the loss tolerance below is argued for that rate (at 1e-3, a first run saw
# lora-fsdp2 leave it for three steps in the noisy phase and come back to 0.01).
LORA = ["--use_peft", "true", "--lora_r", "16", "--lora_alpha", "32", "--lora_dropout", "0.0"]
SMOKE_FLAGS = ["--num_latents", "4", "--trm_hidden_size", "16", "--trm_num_heads", "2", "--n_latent_steps", "2",
             "--n_cycles", "2"]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


# ---------------------------------------------------------------------------------------------- inputs of the runs


def write_backbone(folder: Path, shape: dict) -> None:
    """A random SmolLM3 causal LM of `shape` and a BPE tokenizer trained on the arith text, saved like a Hub model."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, SmolLM3Config, SmolLM3ForCausalLM

    from smollm_trm.arith import make_arith

    rows = make_arith(500, (1, 4), 0, "train")
    text = [f"{r['question']} {r['reasoning']} {r['answer']}" for r in rows]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    # <think> / </think> in the vocabulary, as in SmolLM3's: LoRA then trains no new token rows, which FSDP2 refuses
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>", "<think>", "</think>"]
    backend.train_from_iterator(text, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    from tokenizers import decoders

    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in ("<pad>", "<s>", "</s>")}
    config = SmolLM3Config(**shape, pad_token_id=ids["<pad>"], bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
                           tie_word_embeddings=True)
    torch.manual_seed(0)
    # Initialised on the GPU where there is one: 3 B normal draws take minutes on the CPU.
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = SmolLM3ForCausalLM(config)
    model.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()


def write_data(folder: Path) -> Path:
    """The arith splits, written once here (not by every rank)."""
    sys.path.insert(0, str(ROOT))
    from smollm_trm.named_datasets import write_arith

    return write_arith(folder, seed=0)


def train_flags(args, backbone: Path, data: Path, output_dir: Path, per_device_batch: int, save: bool) -> list[str]:
    flags = ["--model_name_or_path", str(backbone), "--dataset_name", str(data), "--output_dir", str(output_dir),
             "--max_length", "512", "--per_device_train_batch_size", str(per_device_batch),
             "--per_device_eval_batch_size", str(per_device_batch), "--max_steps", str(args.steps),
             "--logging_steps", "1", "--learning_rate", "3e-4", "--lr_scheduler_type", "constant",
             "--warmup_steps", "0", "--max_grad_norm", "1.0", "--seed", "0", "--report_to", "none",
             "--num_demo_answers", "0", "--eval_strategy", "no", "--eval_fraction", "0",
             "--dataloader_num_workers", "0", "--save_strategy", "steps" if save else "no",
             "--save_steps", str(max(1, args.steps // 2)),
             "--bf16", "true" if args.precision == "bf16" else "false"]
    if args.smoke:
        flags += ["--use_cpu", "true", "--dataloader_pin_memory", "false"]
    return flags


# ---------------------------------------------------------------------------------------------------- one run


def launch(args, name: str, config: str | None, processes: int, flags: list[str], out: Path) -> dict:
    """`accelerate launch` this script in --worker mode; returns the run's record (or the error)."""
    run_dir = out / name
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
               "--main_process_port", str(29500 + len(list(out.iterdir())))]
    if config is None:
        command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    else:
        command += ["--config_file", str(ACCELERATE_CONFIGS / config)]
    command += [str(Path(__file__).resolve()), "--worker", "--out", str(run_dir), *flags]
    env = {**os.environ, **NCCL_ENV, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if args.smoke:
        env["OMP_NUM_THREADS"] = "1"
    elif processes == 1:
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    start = time.time()
    with open(run_dir / "launch.log", "w") as log:
        # A session of its own, so that a run past its time is killed with its worker processes (which hold GPUs).
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            returncode = process.wait(timeout=args.run_timeout)
        except subprocess.TimeoutExpired:  # recorded as a failed run; the next runs still get made
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            returncode = f"timed out after {args.run_timeout} s"
    record = {"name": name, "config": config, "processes": processes, "wall_s": round(time.time() - start, 1),
              "returncode": returncode, "log": str(run_dir / "launch.log")}
    metrics = run_dir / "metrics.json"
    if returncode == 0 and metrics.is_file():
        record.update(json.loads(metrics.read_text()))
    else:
        record["error"] = (run_dir / "launch.log").read_text()[-3000:]
    print(f"[{name}] rc={returncode} in {record['wall_s']} s", flush=True)
    return record


def worker(out: Path, flags: list[str]) -> None:
    """Inside `accelerate launch`: train with train_sft.py's trainer, record losses, step times and peak memory,
    save the final folder (gathered from the shards under FSDP2)."""
    import torch
    from transformers import TrainerCallback

    from smollm_trm.arguments import make_parser
    from smollm_trm.export import save_final
    from smollm_trm.training import build_trainer

    data_args, training_args, model_args, trm_args = make_parser().parse_args_and_config(flags)
    trainer, data = build_trainer(data_args, training_args, model_args, trm_args)
    cuda = torch.cuda.is_available() and not training_args.use_cpu
    record = {"losses": {}, "step_end_s": {}, "num_tokens": {}}

    class Recorder(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            record["step_end_s"][state.global_step] = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                record["losses"][state.global_step] = float(logs["loss"])
                record["num_tokens"][state.global_step] = float(logs.get("num_tokens", 0))

    trainer.add_callback(Recorder())
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0],
                        device=trainer.accelerator.device)
    peaks = trainer.accelerator.gather(peak).tolist()
    folder = save_final(trainer, trm_args, model_args, data_args, None)
    if trainer.is_world_process_zero():
        record.update(peak_memory_gib=peaks, world_size=trainer.accelerator.num_processes,
                      distributed_type=str(trainer.accelerator.distributed_type), final=str(folder),
                      num_parameters=saved_parameters(folder))
        (out / "metrics.json").write_text(json.dumps(record, indent=1))


def saved_parameters(folder: Path) -> int:
    """Parameters in a saved folder's safetensors (the merged model of a LoRA run, whatever the sharding was)."""
    from safetensors import safe_open

    total = 0
    for path in Path(folder).glob("*.safetensors"):
        with safe_open(str(path), "pt") as file:
            total += sum(math.prod(file.get_slice(name).get_shape()) for name in file.keys())
    return total


# ------------------------------------------------------------------------------------------------------- analysis


def throughput(record: dict) -> float | None:
    """Input tokens (padding excluded, thought positions not counted) per second per GPU, after the warm-up steps."""
    ends = {int(k): v for k, v in record.get("step_end_s", {}).items()}
    tokens = {int(k): v for k, v in record.get("num_tokens", {}).items()}
    last = max(ends, default=0)
    first = min(WARMUP_STEPS, last - 1)
    if last <= first or first not in tokens or last not in tokens:
        return None
    return (tokens[last] - tokens[first]) / (ends[last] - ends[first]) / record["world_size"]


def loss_gap(record: dict, reference: dict, steps: range) -> float | None:
    a, b = record.get("losses", {}), reference.get("losses", {})
    shared = [str(s) for s in steps if str(s) in a and str(s) in b]
    return max(abs(a[s] - b[s]) for s in shared) if shared else None


def generate_on_cpu(folder: str) -> dict:
    """Load the final folder in a fresh CPU-only process as a user would, and generate after `<think>`."""
    code = f"""
import json, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained({folder!r}, trust_remote_code=True).eval()
tok = AutoTokenizer.from_pretrained({folder!r}, trust_remote_code=True)
text = tok.apply_chat_template([{{"role": "user", "content": "Start with 3. Add 4. What is the result?"}}],
                               add_generation_prompt=True, tokenize=False) + "<think>"
inputs = tok(text, return_tensors="pt", add_special_tokens=False)
out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
new = out[0, inputs["input_ids"].shape[1]:]
print(json.dumps({{"device": str(model.device), "new_tokens": len(new), "text": tok.decode(new)}}))
"""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    try:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/",
                                timeout=300)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": "timed out after 300 s"}
    if result.returncode != 0:
        return {"ok": False, "error": result.stderr[-2000:]}
    return {"ok": True, **json.loads(result.stdout.strip().splitlines()[-1])}


# --------------------------------------------------------------------------------------------------------- driver


# name: (accelerate config or None, processes, the run its losses are compared with, LoRA)
RUNS = {
    "1gpu": (None, 1, "1gpu", False),
    "ddp": ("ddp.yaml", 2, "1gpu", False),
    "fsdp2": ("fsdp2.yaml", 2, "1gpu", False),
    "zero3": ("deepspeed_zero3.yaml", 2, "1gpu", False),
    "lora-1gpu": (None, 1, "lora-1gpu", True),
    "lora-fsdp2": ("fsdp2.yaml", 2, "lora-1gpu", True),
    "lora-zero3": ("deepspeed_zero3.yaml", 2, "lora-1gpu", True),
}
SHARDED = {name for name, (config, *_) in RUNS.items() if config in ("fsdp2.yaml", "deepspeed_zero3.yaml")}
DEFAULT_RUNS = ("1gpu", "ddp", "fsdp2", "zero3")


def plan_runs(args) -> tuple[list[str], dict[str, str]]:
    """(runs to make, in order, with the references they need; {skipped run: why})."""
    import importlib.util

    wanted = list(dict.fromkeys(args.runs))
    for name in list(wanted):
        reference = RUNS[name][2]
        if reference not in wanted:
            wanted.insert(0, reference)
    skipped = {}
    for name in wanted:
        config = RUNS[name][0]
        if config == "fsdp2.yaml" and args.smoke:
            skipped[name] = "skipped on CPU: accelerate applies FSDP only on GPUs (tests shard on a gloo mesh)"
        elif config == "deepspeed_zero3.yaml" and importlib.util.find_spec("deepspeed") is None:
            skipped[name] = "not installed"
    return [name for name in wanted if name not in skipped], skipped


def run_all(args, out: Path, results: dict) -> None:
    """Make the runs into `results`, rewriting results.json / results.md after each: a run that hangs past the
    caller's time limit leaves the ones before it measured."""
    backbone, data = out / "backbone", write_data(out / "data")
    shape_flags = results["shape_flags"]
    write_backbone(backbone, results["shape"])
    plan, skipped = plan_runs(args)
    # The run whose checkpoint is resumed on one device: FSDP2 (DDP in the CPU smoke test), if it is made.
    sharded = next((name for name in ("fsdp2", "ddp") if name in plan), None)
    if sharded is not None and args.shape == "3b":
        # 3B in full: a checkpoint is 36 GiB of weights and AdamW moments; resuming is proved at the reduced shape.
        skipped["resume"], sharded = "not made at the 3b shape (36 GiB checkpoints; proved at the reduced shape)", None
    results.update(runs={}, skipped=skipped, sharded_run=sharded, cpu_generate={})
    runs = results["runs"]
    for name in plan:
        config, processes, _, lora = RUNS[name]
        flags = train_flags(args, backbone, data, out / name / "train", GLOBAL_BATCH // processes, name == sharded)
        runs[name] = launch(args, name, config, processes, flags + shape_flags + (LORA if lora else []), out)
        write_results(results, out)
    if sharded is not None:
        checkpoint = out / sharded / "train" / f"checkpoint-{max(1, args.steps // 2)}"
        flags = train_flags(args, backbone, data, out / "resume" / "train", GLOBAL_BATCH, False)
        flags += shape_flags + ["--resume_from_checkpoint", str(checkpoint)]
        # Same launcher config on one process: DCP reshards the 2-way checkpoint onto the single device.
        runs["resume"] = launch(args, "resume", RUNS[sharded][0], 1, flags, out)
        runs["resume"]["resumed_from"] = str(checkpoint)
        write_results(results, out)
    # Every sharded run's final folder, and the resumed run's, loads on the CPU in a fresh process and generates.
    shown = [name for name in plan if name in SHARDED or name == sharded]
    for name in shown:
        results["cpu_generate"][name] = (generate_on_cpu(runs[name]["final"]) if runs[name].get("final")
                                         else {"ok": False, "error": f"the {name} run left no final folder"})
        write_results(results, out)


def write_results(results: dict, out: Path) -> str:
    """Compare the runs made so far; write results.json and the Markdown table; return the table."""
    compare(results, results["steps"])
    results["ok"] = (all(r["loss_ok"] for r in results["runs"].values())
                     and all(g["ok"] for g in results["cpu_generate"].values()))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    markdown = table(results)
    (out / "results.md").write_text(markdown + "\n")
    return markdown


def compare(results: dict, steps: int) -> None:
    """Add each run's loss gaps to the 1-GPU curve, tokens/s per GPU and pass/fail."""
    runs = results["runs"]
    for name, record in runs.items():
        window = range(max(1, steps // 2) + 1, steps + 1) if name == "resume" else range(1, steps + 1)
        against = runs.get(results["sharded_run"] if name == "resume" else RUNS[name][2], {})
        record["tokens_per_s_per_gpu"] = throughput(record)
        record["max_loss_gap"] = loss_gap(record, against, window)
        record["first_step_gap"] = None if name == "resume" else loss_gap(record, against, range(1, 2))
        record["loss_ok"] = (record["returncode"] == 0 and record["max_loss_gap"] is not None
                             and record["max_loss_gap"] <= LOSS_TOLERANCE
                             and (record["first_step_gap"] or 0.0) <= FIRST_STEP_TOLERANCE)
        record["steps_recorded"] = len(record.get("losses", {}))


def table(results: dict) -> str:
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    lines = ["| run | GPUs | step-1 loss | step-1 gap | max loss gap | ok | tokens/s/GPU | peak GiB/GPU | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["runs"].items():
        peaks = "/".join(f"{p:.1f}" for p in r.get("peak_memory_gib", [])) or "-"
        lines.append(f"| {name} | {r['processes']} | {fmt(r.get('losses', {}).get('1'), '.4f')} | "
                     f"{fmt(r.get('first_step_gap'), '.4f')} | {fmt(r.get('max_loss_gap'), '.4f')} | "
                     f"{'yes' if r['loss_ok'] else 'NO'} | {fmt(r.get('tokens_per_s_per_gpu'), '.0f')} | {peaks} | "
                     f"{r['wall_s']} |")
    for name, why in results["skipped"].items():
        lines.append(f"| {name} | - | {why} | | | | | | |")
    lines.append("")
    resume = (f"; resume: steps after the checkpoint against the uninterrupted {results['sharded_run']} run"
              if results["sharded_run"] else "")
    lines.append(f"Tolerance: max loss gap <= {LOSS_TOLERANCE} nats, step-1 gap <= {FIRST_STEP_TOLERANCE} (see the "
                 f"docstring), against 1gpu (lora-*: against lora-1gpu){resume}.")
    for name, g in results["cpu_generate"].items():
        lines.append(f"Final folder of {name} on CPU: "
                     + (f"loaded, generated {g['new_tokens']} tokens {g['text']!r}" if g["ok"] else "FAILED"))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--out", required=True, help="Folder for the runs, results.json and the table.")
    parser.add_argument("--smoke", action="store_true", help="CPU, gloo, tiny model, 3 steps.")
    parser.add_argument("--shape", choices=SHAPES, default="reduced",
                        help="Model shape on GPUs: reduced (8 layers of width 1024, K = 64) or 3b (SmolLM3-3B, "
                             "K = 256).")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                        help="bf16 autocast (DeepSpeed: bf16 weights) or fp32 throughout, which separates a strategy's "
                             "rounding from its logic when a curve leaves the tolerance (the CPU smoke test is fp32).")
    parser.add_argument("--steps", type=int, default=None, help="Optimizer steps per run (30; smoke: 3).")
    parser.add_argument("--run_timeout", type=int, default=240, help="Seconds one launch may take.")
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(DEFAULT_RUNS),
                        help="Runs to make (each brings its reference: 1gpu, or lora-1gpu for lora-*); default: "
                             f"{' '.join(DEFAULT_RUNS)}.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    out = Path(args.out).resolve()
    if args.worker:
        worker(out, rest)
        return 0
    if rest:
        parser.error(f"unknown arguments {rest}")
    args.steps = args.steps or (3 if args.smoke else 30)
    if args.smoke:
        args.precision = "fp32"
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    shape, shape_flags = (SMOKE_SHAPE, SMOKE_FLAGS) if args.smoke else SHAPES[args.shape]
    results = {"smoke": args.smoke, "shape_name": "smoke" if args.smoke else args.shape, "steps": args.steps,
               "global_batch": GLOBAL_BATCH, "precision": args.precision, "shape": shape,
               "shape_flags": shape_flags, "lora_flags": LORA, "env": NCCL_ENV,
               # ZeRO-3's numerics depend on it (gradient reduction dtype): recorded with the numbers it gave
               "deepspeed_config": json.loads((ACCELERATE_CONFIGS / "deepspeed_zero3.json").read_text())}
    run_all(args, out, results)
    results["wall_s"] = round(time.time() - start, 1)
    print(write_results(results, out))
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
