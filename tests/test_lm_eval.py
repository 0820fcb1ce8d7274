"""lm-evaluation-harness drives a SmolLM+TRM model as any HF causal LM: loglikelihoods through the thoughts equal a
direct forward, and the shipped GSM8K task (lm_eval_tasks/) generates through them with the thinking template."""

import lm_eval  # the `lm-eval` extra, also in `dev`
import pytest
import torch

from conftest import ROOT, THINK, tiny_model, tiny_tokenizer
from smollm_trm.chat import make_template_think

TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['content'] }} </s> {% endfor %}{% if add_generation_prompt %}w10 {% endif %}"
)


@pytest.fixture(scope="module")
def harness():
    from lm_eval.models.huggingface import HFLM

    model = tiny_model()
    model.generation_config.update(pad_token_id=0, eos_token_id=2)
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    make_template_think(tokenizer)
    return model, tokenizer, HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, device="cpu")


def test_loglikelihood_through_the_thoughts_equals_a_direct_forward(harness):
    from lm_eval.api.instance import Instance

    model, tokenizer, lm = harness
    pairs = [("w7 w8 <think>", " w9 w10"), ("w11 <think> w12", " w13"), ("w14 w15", " w16 <think> w17"),
             ("w20 w21 w22 <think>", " w23 w24 w25")]
    requests = [Instance("loglikelihood", {}, pair, index) for index, pair in enumerate(pairs)]
    scored = lm.loglikelihood(requests)
    for (context, continuation), (log_prob, _) in zip(pairs, scored):
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        ids = context_ids + tokenizer(continuation, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
        expected = sum(logits[i - 1, ids[i]].item() for i in range(len(context_ids), len(ids)))
        assert log_prob == pytest.approx(expected, abs=1e-4), (context, continuation)
    assert any(THINK in tokenizer(c, add_special_tokens=False)["input_ids"] for c, _ in pairs)


def test_the_shipped_gsm8k_task_generates_through_the_thoughts(harness, monkeypatch):
    from lm_eval.tasks import TaskManager

    model, _, lm = harness
    monkeypatch.chdir(ROOT)  # the local task reads ../shared/data/gsm8k relative to the project root
    with model.watch_thoughts() as calls:
        results = lm_eval.simple_evaluate(model=lm, tasks=["gsm8k_trm_local"], limit=2, apply_chat_template=True,
                                          gen_kwargs="n_cycles=2", log_samples=True,
                                          task_manager=TaskManager(include_path=str(ROOT / "lm_eval_tasks")))
    metrics = results["results"]["gsm8k_trm_local"]
    assert 0.0 <= metrics["exact_match,last-number"] <= 1.0
    samples = results["samples"]["gsm8k_trm_local"]
    assert len(samples) == 2 and all(s["arguments"][0][0].endswith("<think>") for s in samples)
    assert samples[0]["target"] == "18"  # the number after #### of the first test question (Janet's ducks)
    assert calls and calls[0].rows.all() and calls[0].thoughts.shape[1] == model.config.num_latents
