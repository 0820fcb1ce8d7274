"""One training step of `train_sft.py`, as it runs, under torch.profiler: where the host's and the GPU's time go.

    python bench/profile_train_sft.py [--profile_step 8] [--cudnn_attention] -- TRAIN_SFT_FLAGS...
    # the depth recipe's last stage, its flags as `python -m experiments depth` prints them for the arm:
    python bench/profile_train_sft.py --out bench/results -- --config RUN/train_config.yaml \
        --dataset_name RUN/data/seed0 --model_name_or_path RUN/backbones/seed0 --output_dir /tmp/profile-run \
        --start_over true ... \
        --curriculum_first_stage 4 --max_steps 10 --save_strategy no --eval_strategy no --compile_thoughts default

The trainer is built by `smollm_trm.training.build_trainer` from the same flags, so the step is the one a user's run
takes (the curriculum's rows, `TRMSFTTrainer`'s loss, the backward, clipping, the optimizer; the batch is collated
before the step begins, so collation is outside it). Every step is timed (synchronised);
step `--profile_step` (after the compiler's warm-up) is profiled. `--cudnn_attention` puts cuDNN back among sdpa's
kernels, which training leaves out (smollm_trm.attention): run both to compare them.
Reported for the profiled step: its time, the host's CPU time (every thread's, summed), the GPU's time in kernels,
copies and memsets (its share of the step is how busy the GPU was), the kernel launch calls (CUDA graph replays
not counted), and the tables of the operations costing the host and
the GPU most. This is a profiler, not a comparison: it has no plain-backbone arm (bench/depth_step.py and
bench/train_step.py have).
"""

import argparse
import sys
from pathlib import Path

import torch
from common import kernel_profiler, kernel_seconds, log, markdown_table, synchronized_now, write_results
from transformers import TrainerCallback

from smollm_trm.arguments import make_parser
from smollm_trm.training import build_trainer


class ProfileOneStep(TrainerCallback):
    """Times every optimizer step and profiles one of them."""

    def __init__(self, profile_step: int):
        self.profile_step, self.step_times, self.started = profile_step, [], 0.0
        self.profiler, self.profile = None, None

    def on_step_begin(self, args, state, control, **kwargs):
        started = synchronized_now()
        if state.global_step == self.profile_step:
            self.profiler = kernel_profiler()
            self.profiler.__enter__()
            started = synchronized_now()
        self.started = started

    def on_step_end(self, args, state, control, **kwargs):
        self.step_times.append(synchronized_now() - self.started)
        log(f"step {state.global_step}: {self.step_times[-1]:.3f} s")
        if self.profiler is not None:
            self.profiler.__exit__(None, None, None)
            self.profile = summarize(self.profiler, self.step_times[-1])
            self.profiler = None


def summarize(profiler, step_s: float, rows: int = 30) -> dict:
    events, kernel_s = profiler.key_averages(), kernel_seconds(profiler)
    host = [event for event in events if event.device_type != torch.autograd.DeviceType.CUDA]
    return {
        "profiled_step_s": step_s,
        "host_s": sum(event.self_cpu_time_total for event in host) / 1e6,
        "kernel_s": kernel_s,
        "gpu_busy": kernel_s / step_s,
        "kernel_launches": sum(event.count for event in events if "LaunchKernel" in event.key),
        "aten_ops": sum(event.count for event in events if event.key.startswith("aten::")),
        "top_host": events.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60),
        "top_gpu": (events.table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=60)
                    if kernel_s else ""),
    }


def split_at_double_dash(argv: list[str]) -> tuple[list[str], list[str]]:
    """(this script's flags, train_sft.py's): everything after `--` is train_sft.py's."""
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile_step", type=int, default=8, help="the optimizer step profiled (0-based)")
    parser.add_argument("--cudnn_attention", action="store_true", help="let sdpa choose cuDNN again")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ours, flags = split_at_double_dash(sys.argv[1:])
    args = parser.parse_args(ours)
    data_args, training_args, model_args, trm_args = make_parser().parse_args_and_config(flags)
    if training_args.max_steps <= args.profile_step:
        parser.error(f"--profile_step {args.profile_step} is never reached: set train_sft.py's --max_steps above it")
    trainer, _ = build_trainer(data_args, training_args, model_args, trm_args)
    torch.backends.cuda.enable_cudnn_sdp(args.cudnn_attention)  # after build_trainer, which turns it off
    profiler = ProfileOneStep(args.profile_step)
    trainer.add_callback(profiler)
    trainer.train()
    profile = profiler.profile
    if profile is None:
        raise SystemExit(f"training stopped at step {trainer.state.global_step}, before step {args.profile_step} "
                         "could be profiled (a time limit, a non-finite loss?): see its log above")
    name = f"profile_train_sft{'_cudnn' if args.cudnn_attention else ''}"
    row = {"cudnn_attention": args.cudnn_attention, **{k: v for k, v in profile.items() if not k.startswith("top_")}}
    path = write_results(name, [row], {"step_times_s": profiler.step_times, "profile_step": args.profile_step},
                         args.out)
    (args.out / f"{name}.txt").write_text(f"host, self time:\n{profile['top_host']}\nGPU, self time:\n"
                                          f"{profile['top_gpu']}")
    print(markdown_table([row], list(row)))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
