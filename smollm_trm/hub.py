"""The Hub side: what a Hub id looks like, the model card (one writer for training and `eval --write_card`, built on
`huggingface_hub.ModelCard`), and pushing a folder."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
LOCAL_SUFFIXES = (".json", ".jsonl", ".gguf")  # `owner/name.jsonl` is a file, not a repository
CARD_FILE = "README.md"
CARD_TAGS = ["custom_code", "smollm-trm", "latent-reasoning", "trl", "sft"]
WIDGET_QUESTIONS = ("What is 38 + 47?", "A box holds 8 pencils. How many boxes hold 96?")
# Rendered by `ModelCard.from_template` (jinja2); `card_data` is the YAML header.
CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}
{% if settings %}
A decoder-only language model that thinks in latent space: after each `<think>` token a Tiny Recursive Model
compresses the context and refines K = {{ settings.num_latents }} latent thought vectors, which the
backbone{% if base_model %} (`{{ base_model }}`){% endif %} attends to before it answers. Fine-tuned with TRL's SFT.

## Usage

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{{ repo_id }}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{{ repo_id }}", trust_remote_code=True)
messages = [{"role": "user", "content": "{{ question }}"}]
prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)  # ends with <think>
inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
output = model.generate(**inputs, max_new_tokens=64, n_cycles=3)  # n_cycles: recursion depth at inference
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

## Training

| setting | value |
|---|---|
{% for key, value in settings.items() %}| {{ key }} | {{ value }} |
{% endfor %}{% if metrics %}
## Evaluation

| metric | value |
|---|---|
{% for key, value in metrics.items() %}| {{ key }} | {{ "%.4f" | format(value) }} |
{% endfor %}{% endif %}{% else %}
Evaluation results are written into the metadata above by `python -m eval --write_card`.
{% endif %}"""


def is_hub_id(name: str) -> bool:
    """Whether `name` reads as a Hub repository id (`owner/name`) rather than a local path."""
    return bool(HUB_ID.fullmatch(name)) and not name.startswith(".") and Path(name).suffix not in LOCAL_SUFFIXES


def _render(folder: str | os.PathLike, card_data, **variables: Any) -> Path:
    from huggingface_hub import ModelCard

    path = Path(folder) / CARD_FILE
    ModelCard.from_template(card_data, template_str=CARD_TEMPLATE, **variables).save(path)
    return path


# What the Trainer's evaluate() reports beside the metrics: timings and the epoch, not properties of the model.
NOT_METRICS = ("runtime", "samples_per_second", "steps_per_second", "epoch")


def card_metrics(eval_results: dict[str, float] | None) -> dict[str, float] | None:
    """The metrics of an evaluate() result worth a card: numbers, without timings and the epoch."""
    if not eval_results:
        return None
    return {key: value for key, value in eval_results.items()
            if isinstance(value, (int, float)) and not key.removeprefix("eval_").endswith(NOT_METRICS)}


def write_model_card(
    folder: str | os.PathLike,
    *,
    repo_id: str,
    base_model: str | None,
    dataset: str | None,
    settings: dict[str, Any],
    metrics: dict[str, float] | None = None,
    license: str = "apache-2.0",
) -> Path:
    """Write the card of a trained model: Hub metadata (widget examples as chat messages, inference parameters),
    what the model is, how to use it from `repo_id` (its Hub id, or the folder it will stay in), how it was trained
    (`settings`, with `num_latents`), its `metrics` and `dataset` (a Hub id, or None)."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(
        library_name="transformers", pipeline_tag="text-generation", license=license, tags=list(CARD_TAGS),
        base_model=base_model, datasets=[dataset] if dataset else None,
        widget=[{"messages": [{"role": "user", "content": question}]} for question in WIDGET_QUESTIONS],
        inference={"parameters": {"max_new_tokens": 64, "do_sample": False}},
    )
    return _render(folder, data, title="SmolLM+TRM", base_model=base_model, settings=settings,
                   metrics=card_metrics(metrics), question=WIDGET_QUESTIONS[0], repo_id=repo_id)


def add_eval_results(folder: str | os.PathLike, results: list) -> Path:
    """Put evaluation results (`huggingface_hub.EvalResult`s) into a model folder's card as `model-index`: they
    replace earlier results of the same task, split, arguments and depth; other results and the card's text are
    kept. A folder without a card gets a short one."""
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    path = folder / CARD_FILE
    if not path.is_file():
        return _render(folder, ModelCardData(model_name=folder.name, eval_results=results), title=folder.name)
    card = ModelCard.load(path)
    kept = [old for old in card.data.eval_results or [] if not any(old.is_equal_except_value(new) for new in results)]
    card.data.eval_results = kept + results
    card.data.model_name = card.data.model_name or folder.name  # model-index needs a name
    card.save(path)
    return path


def push_folder(folder: str | os.PathLike, repo_id: str, token: str | None = None, private: bool | None = None) -> str:
    """Create the Hub repo if needed and upload `folder`; without network the folder is kept and the error says so."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, exist_ok=True, private=private)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload SmolLM+TRM")
    except (OSError, HfHubHTTPError, _http_client_error()) as err:
        raise RuntimeError(
            f"Could not push {folder} to the Hub repo {repo_id!r} ({type(err).__name__}: {err}). The folder is kept; "
            f"push it later with `hf upload {repo_id} {folder}` once the Hub is reachable."
        ) from err
    return str(getattr(commit, "commit_url", commit))


def _http_client_error() -> type[Exception]:
    """The HTTP client's base error (connection refused, DNS, timeouts): httpx2 from huggingface_hub 2.x, else httpx."""
    try:
        import httpx2 as client
    except ImportError:
        import httpx as client
    return client.HTTPError
