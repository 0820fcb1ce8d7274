"""Which fused attention kernels our training and evaluation processes let PyTorch's sdpa choose."""

from __future__ import annotations


def skip_cudnn_attention() -> None:
    """Take cuDNN out of `scaled_dot_product_attention`'s choices (flash, memory-efficient and math remain). Our
    forward calls attention many times on small blocks (every `<think>`, supervision step and TRM network call). In a
    profiled depth-task training step on one H200 (docs/PERFORMANCE.md, session 16; a step still warming up), cuDNN's
    746 forward and 250 backward calls took 1.0 s of the step's 2.3 s of host time for 45 ms of GPU time.
    Call it before anything is compiled: torch.compile fixes the kernel when it traces a graph. Process-wide: the
    model's own code (run by users with `trust_remote_code`) sets nothing global."""
    import torch

    torch.backends.cuda.enable_cudnn_sdp(False)
