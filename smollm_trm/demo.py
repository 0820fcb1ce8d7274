"""The demo (`app.py`, a Gradio app that also runs as a Hugging Face Space): a question answered with the thoughts and
without them, what each `<think>` thought (its thoughts read as tokens, the halting probability of each supervision
step), and the time to answer.

    model, tokenizer = load_demo_model("outputs/quickstart/final")
    reply = answer(model, tokenizer, "What is 17 * 3 + 4?", n_cycles=3, n_supervision_steps=1)
    build_demo(model, tokenizer, "outputs/quickstart/final").launch()
"""

from __future__ import annotations

import time

import torch

from smollm_trm.chat import chat_prompt, describe_thoughts

MAX_NEW_TOKENS = 64
MAX_SUPERVISION_STEPS = 8  # the slider's end
TITLE = "SmolLM+TRM: latent reasoning with a Tiny Recursive Model"


def load_demo_model(source: str, trust_remote_code: bool = False):
    """(model, tokenizer) of a SmolLM+TRM folder or Hub id, on the GPU when there is one, in eval mode."""
    from smollm_trm.loading import check_think_token, load_causal_lm, load_tokenizer

    model = load_causal_lm(source, trust_remote_code=trust_remote_code).eval()
    tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
    check_think_token(model.config, tokenizer)
    if torch.cuda.is_available():
        model = model.cuda()
    return model, tokenizer


def _generate(model, tokenizer, prompt: str, **kwargs) -> tuple[str, float]:
    """(the decoded answer, seconds to generate it)."""
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    start = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, **kwargs)
    seconds = time.perf_counter() - start
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip(), seconds


def answer(model, tokenizer, question: str, n_cycles: int, n_supervision_steps: int) -> dict:
    """The question answered with the thoughts (at this depth) and without them (`<think>` read as a token), and
    per `<think>`: each thought read as a token through the LM head, the halting probability of each supervision
    step, and the steps used."""
    if not question.strip():
        raise ValueError("Ask a question first.")
    prompt = chat_prompt(tokenizer, [{"role": "user", "content": question}], think=True)
    with model.watch_thoughts() as calls:
        with_thoughts, seconds = _generate(model, tokenizer, prompt, n_cycles=n_cycles,
                                           n_supervision_steps=n_supervision_steps)
    without_thoughts, seconds_without = _generate(model, tokenizer, prompt, insert_thoughts=False)
    return {"answer": with_thoughts, "seconds": seconds, "answer_without_thoughts": without_thoughts,
            "seconds_without_thoughts": seconds_without, "thinks": describe_thoughts(model, tokenizer, calls, 1)[0]}


def thought_table(reply: dict) -> list[list]:
    """One row per `<think>`: its number, the thoughts read as tokens, halting per supervision step, steps used."""
    return [[index + 1, " ".join(repr(token) for token in think["tokens"]),
             ", ".join(f"{p:.3f}" for p in think["halt_probability"] or []) or "-", think["supervision_steps"]]
            for index, think in enumerate(reply["thinks"])]


def build_demo(model, tokenizer, source: str):
    """The Gradio app: a question, depth sliders, the two answers with their times, and the thought panel."""
    import gradio as gr

    trained = model.config.n_cycles

    def respond(question, n_cycles, n_supervision_steps):
        try:
            reply = answer(model, tokenizer, question, int(n_cycles), int(n_supervision_steps))
        except ValueError as error:
            raise gr.Error(str(error)) from error
        timing = (f"{reply['seconds']:.3f} s with thoughts, {reply['seconds_without_thoughts']:.3f} s without "
                  f"({len(reply['thinks'])} <think>, K = {model.config.num_latents} thoughts each)")
        return reply["answer"], reply["answer_without_thoughts"], timing, thought_table(reply)

    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\n`{source}`: after `<think>`, K thought vectors from the recursion; the answer "
                    "attends to them. Below, the same question answered without them, and what they read as.")
        question = gr.Textbox(label="Question", elem_id="question", placeholder="What is 17 * 3 + 4?")
        with gr.Row():
            n_cycles = gr.Slider(1, 2 * trained, value=trained, step=1, label=f"n_cycles (trained: {trained})")
            n_supervision_steps = gr.Slider(1, MAX_SUPERVISION_STEPS, value=model.config.n_supervision_steps, step=1,
                                            label="n_supervision_steps")
        ask = gr.Button("Answer", elem_id="ask", variant="primary")
        with gr.Row():
            with_thoughts = gr.Textbox(label="Answer with thoughts", elem_id="answer")
            without_thoughts = gr.Textbox(label="Answer without thoughts", elem_id="answer-without")
        timing = gr.Textbox(label="Time to answer", elem_id="timing")
        thoughts = gr.Dataframe(headers=["<think>", "thoughts read as tokens", "halting per step", "steps used"],
                                label="Thoughts", elem_id="thoughts", wrap=True)
        outputs = [with_thoughts, without_thoughts, timing, thoughts]
        ask.click(respond, [question, n_cycles, n_supervision_steps], outputs)
        question.submit(respond, [question, n_cycles, n_supervision_steps], outputs)
    return demo
