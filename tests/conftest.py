"""Shared fixtures: tiny random SmolLM3 backbones wrapped with a TRM, built in code, offline."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import SmolLM3Config  # noqa: E402

from configuration_smollm_trm import SmolLMTRMConfig  # noqa: E402
from modeling_smollm_trm import SmolLMTRMForCausalLM  # noqa: E402

VOCAB = 96
THINK = 5
PAD_ID = 0
EOS = 2


def tiny_text_config(**overrides) -> SmolLM3Config:
    settings = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=EOS,
        no_rope_layer_interval=2,
    )
    settings.update(overrides)
    return SmolLM3Config(**settings)


def tiny_config(**overrides) -> SmolLMTRMConfig:
    settings = dict(
        text_config=tiny_text_config(), think_token_id=THINK, num_latents=4, trm_hidden_size=16, trm_num_layers=2,
        trm_num_heads=2, n_latent_steps=2, n_cycles=2,
    )
    settings.update(overrides)
    return SmolLMTRMConfig(**settings)


def tiny_model(seed: int = 0, attn_implementation: str = "eager", **overrides) -> SmolLMTRMForCausalLM:
    torch.manual_seed(seed)
    config = tiny_config(**overrides)
    config._attn_implementation = attn_implementation
    model = SmolLMTRMForCausalLM(config).eval()
    return model


@pytest.fixture
def model() -> SmolLMTRMForCausalLM:
    return tiny_model()


def tiny_tokenizer():
    """A word-level tokenizer over the tiny vocabulary: "w7" is id 7, `<think>` is id THINK."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = {"<pad>": PAD_ID, "<s>": 1, "</s>": EOS, "<unk>": 3, "</think>": 4, "<think>": THINK}
    vocab = {**{f"w{i}": i for i in range(VOCAB) if i not in specials.values()}, **specials}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        additional_special_tokens=["<think>", "</think>"],
    )


def pad_batch(rows: list[list[int]], sides: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad rows to a common length, each on its own side ("left" or "right")."""
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), PAD_ID, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (row, side) in enumerate(zip(rows, sides)):
        span = slice(0, len(row)) if side == "right" else slice(length - len(row), length)
        ids[i, span] = torch.tensor(row)
        mask[i, span] = 1
    return ids, mask


def run_isolated(code: str, *args: str, cwd: Path, timeout: int = 300) -> str:
    """Run `code` with `python -I`, offline and without PYTHONPATH: the project is not importable, as for a user who
    downloaded a saved folder. Returns stdout; fails the test with stderr's end on a non-zero exit."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(Path(cwd) / "hf_home"), TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-I", "-c", code, *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout
