"""smollm-trm: SmolLM3 with a Tiny Recursive Model that thinks in latent space, and what trains and ships it.

The model itself is the remote code at the project's top level (`configuration_smollm_trm.py`,
`modeling_smollm_trm.py`), which a saved folder carries; this package holds everything else, one concept a module:

    arguments       TRMArguments (derived from SmolLMTRMConfig) and the parser of train_sft.py
    sft_data        source rows -> prompt/completion conversations, validated with thoughts counted
    rows            the JSON / JSONL / Hub row reader that training and eval share
    gsm8k, arith    GSM8K's location and solution parser; generated multi-step arithmetic
    named_datasets  the short dataset names `sample`, `gsm8k`, `arith`
    model_sources   the embedded SmolLM2 GGUF, `.gguf` files, folders and Hub ids
    loading         the model a run starts from, and LoRA
    trainer         TRMSFTTrainer; callbacks: EMA and the non-finite-loss stop; checkpoints: resume
    training        a run's set-up: checks, the model, LoRA, the data, the trainer
    export          loadable folders from whole, LoRA or sharded models; the final folder
    hub             the model card and pushing
    chat            chat prompts that think, and the end-of-run demo

    from smollm_trm import SmolLMTRMForCausalLM, TRMSFTTrainer
"""

import importlib

# Name -> module; imported on first use, so that `import smollm_trm.rows` does not pull in TRL or the model.
_EXPORTS = {
    "SmolLMTRMConfig": "configuration_smollm_trm",
    "SmolLMTRMModel": "modeling_smollm_trm",
    "SmolLMTRMForCausalLM": "modeling_smollm_trm",
    "TRMSFTTrainer": "smollm_trm.trainer",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'smollm_trm' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


__all__ = list(_EXPORTS)
