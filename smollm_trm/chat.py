"""Chat prompts as training renders them, opened with `<think>` where the model should think; and answering chat
prompts with a saved model (the demo at the end of a training run)."""

from __future__ import annotations

import os

from modeling_smollm_trm import THINK_TOKENS

THINK_TOKEN = THINK_TOKENS[0]
DEMO_MAX_NEW_TOKENS = 24
# Appended to a chat template so that its generation prompt opens the assistant turn with `<think>`, as training
# renders it; `enable_thinking=False` (the template variable SmolLM3's own template reads too) leaves it closed.
THINKING_GENERATION_PROMPT = (
    "{%- if add_generation_prompt and (enable_thinking is not defined or enable_thinking) %}"
    + THINK_TOKEN + "{%- endif %}"
)


def opens_thinking(tokenizer) -> bool:
    """Whether the tokenizer's chat template ends its generation prompt with `<think>`."""
    probe = [{"role": "user", "content": "1 + 1?"}]
    prompt = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    return prompt.rstrip().endswith(THINK_TOKEN)


def make_template_think(tokenizer) -> None:
    """Give the tokenizer a chat template whose generation prompt opens `<think>`, so that chat use (`pipeline`
    with messages, the Hub widget, `apply_chat_template`) triggers the thoughts; a template that already does is
    kept. Training renders the same tokens either way: its completions start with `<think>`."""
    if tokenizer.chat_template is not None and not opens_thinking(tokenizer):  # None: training reports it
        tokenizer.chat_template = tokenizer.chat_template + THINKING_GENERATION_PROMPT


def describe_thoughts(model, tokenizer, calls, num_rows: int) -> list[list[dict]]:
    """For each of `num_rows` batch rows, each `<think>` it held in `calls` (`model.watch_thoughts()`'s records): the
    nearest token of each thought through the LM head (a logit lens), the halting probability of each supervision
    step (None for pause thoughts) and the steps used."""
    import torch

    seen = [[] for _ in range(num_rows)]
    for call in calls:
        with torch.inference_mode():
            tokens = model.thought_logits(getattr(call, "readout", call.thoughts)).argmax(-1).tolist()  # (B, K)
        halting = None if call.halt_probability is None else call.halt_probability.float().tolist()
        for row in call.rows.nonzero().flatten().tolist():
            seen[row].append({
                "tokens": [tokenizer.decode([token]) for token in tokens[row]],
                "halt_probability": None if halting is None else [round(p, 4) for p in halting[row]],
                "supervision_steps": int(call.steps_used[row]),
            })
    return seen


def chat_prompt(tokenizer, messages: list[dict], think: bool, latent_steps: int = 1) -> str:
    """Chat template over `messages` with the generation prompt, ending with `<think>` `latent_steps` times when
    the model should think (the template may open the first itself), none otherwise: the assistant turn starts as in
    training, so the thoughts are inserted there. With 1 the model may emit further `<think>` (latent steps)
    itself; with N it is given N latent steps."""
    if latent_steps < 1:
        raise ValueError(f"latent_steps must be >= 1, got {latent_steps}.")
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=think)
    if think:
        opened = prompt.rstrip().endswith(THINK_TOKEN)
        prompt += THINK_TOKEN * (latent_steps - opened)
    return prompt


def demo_answers(folder: str | os.PathLike, prompts: list[list[dict]], max_new_tokens: int = DEMO_MAX_NEW_TOKENS):
    """Reload `folder` as a user would and answer each chat prompt greedily, through the thoughts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    answers = []
    for prompt in prompts:
        text = chat_prompt(tokenizer, prompt, think=True)
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answers.append(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return answers
