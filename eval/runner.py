"""Run models on an eval task: load them, build chat prompts, generate in left-padded batches, score the answers.

A model is a SmolLMTRM folder or Hub id (`model_type == "smollm_trm"`, built with this project's classes: no code
from the folder runs), any other causal LM (a baseline; its own code runs only with `--trust_remote_code`), or an embedded GGUF checkpoint such as `embedded:smollm2`. The prompt is the tokenizer's
chat template over one user turn with the generation prompt, as training renders it (`smollm_trm.chat`); a model
with thoughts then gets `<think>` (or `latent_steps` of them), after which it inserts its K latent thoughts. The answer is what follows the last `</think>` of the
generation (the whole generation when there is none), special tokens removed, passed to `eval.answers`.

Each TRM model runs once per depth (n_cycles T x n_supervision_steps N_sup); other models run once.

What is measured per example:
    tokens_generated  new tokens up to and including the first EOS (max_new_tokens if none came).
    latency_s         wall-clock seconds of its batch's `generate()` call (prompt pass, thoughts, decoding until the
                      last row stopped), divided by the rows of the batch: the amortised time to answer at this
                      batch size, not the latency of a lone request. `batch_latency_s` keeps the undivided time.

    from eval.runner import GenerationSettings, evaluate_models
    runs = evaluate_models(["embedded:smollm2", "runs/trm"], load_task("sample"), GenerationSettings(), n_cycles=[1, 3])
"""

import contextlib
import functools
import itertools
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from eval import load_metric
from eval.answers import answers_match, extract_answer
from eval.diagnostics import DONOR_ABLATIONS, ablated, applies, donor, follows_donor
from eval.tasks import Task
from modeling_smollm_trm import THINK_TOKENS, Depth
from smollm_trm.attention import skip_cudnn_attention
from smollm_trm.chat import chat_prompt, describe_thoughts
from smollm_trm.hub import is_hub_id
from smollm_trm.loading import check_think_token, load_causal_lm, load_tokenizer
from smollm_trm.model_sources import TRM_MODEL_TYPE, embedded_smollm2

logger = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
# Embedded name -> (package shipping the file, GGUF file in the package folder); the package is never imported.
EMBEDDED_MODELS = ("smollm2",)  # located by smollm_trm.model_sources, the one place that knows the package
END_THINK_TOKEN = THINK_TOKENS[1]
PROMPT_STYLES = ("think", "plain")


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 256
    batch_size: int = 8
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    prompt_style: str | None = None  # None: "think" for models with thoughts, "plain" for baselines
    latent_steps: int = 1  # `<think>` tokens a thinking prompt ends with (1: the model may emit more itself)


@dataclass
class LoadedModel:
    name: str  # as given on the command line
    model: torch.nn.Module
    tokenizer: object
    kind: str  # "trm" (recursion, depth sweeps apply), "pause" (learned thoughts), "baseline" (no thoughts)
    source: str  # the folder or Hub id it was loaded from
    gguf_file: str | None
    config: object  # kept when `model` is freed after its runs, for reports
    num_parameters: int
    compiled: bool = False  # its TRM networks run through torch.compile (`compile_thoughts`)

    @property
    def has_thoughts(self) -> bool:
        return self.kind in ("trm", "pause")


@dataclass
class Run:
    """One model at one depth (None for models without recursion): per-example records and the metric."""

    model: LoadedModel
    depth: Depth | None
    records: list[dict]
    metrics: dict = field(default_factory=dict)
    ablation: str | None = None  # eval.diagnostics.ABLATIONS: the thoughts replaced while it answered


# ---------------------------------------------------------------------------------------------------- loading


def embedded_source(name: str) -> tuple[str, str]:
    """(folder, GGUF file) of an embedded model (its package is found, never imported)."""
    key = name.removeprefix(EMBEDDED_PREFIX)
    if key not in EMBEDDED_MODELS:
        raise ValueError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED_PREFIX + k for k in EMBEDDED_MODELS)}")
    return embedded_smollm2()


def _local_gguf(folder: Path, gguf_file: str | None) -> str | None:
    """The GGUF file to load from a folder without config.json: the one given, or the folder's only one."""
    if (folder / "config.json").is_file():
        return None
    found = sorted(p.name for p in folder.glob("*.gguf"))
    if gguf_file is None and len(found) == 1:
        return found[0]
    if gguf_file is None or gguf_file not in found:
        raise FileNotFoundError(
            f"{folder} has no config.json and no GGUF file {gguf_file!r}; GGUF files there: {found or 'none'}. "
            "Pass --gguf_file NAME or a folder saved with save_pretrained."
        )
    return gguf_file


def resolve_source(name: str, gguf_file: str | None) -> tuple[str, str | None]:
    """(folder or Hub id, GGUF file or None) for a --model value; raises when a local path does not exist."""
    if name.startswith(EMBEDDED_PREFIX):
        folder, default_file = embedded_source(name)
        return folder, gguf_file or default_file
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local), _local_gguf(local, gguf_file)
    if is_hub_id(name):
        return name, gguf_file
    raise FileNotFoundError(f"model {name!r}: no folder at {local.resolve()}, and it is not a Hub id like 'owner/name'")


def _from_pretrained(loader, source: str, name: str, **kwargs):
    """`loader(source, **kwargs)`, with an error that says the Hub is unreachable when a Hub id cannot be fetched."""
    from huggingface_hub import constants

    try:
        return loader(source, **kwargs)
    except OSError as error:
        if Path(source).is_dir():
            raise
        reason = "the Hub is unreachable (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else f"loading failed: {error}"
        raise FileNotFoundError(
            f"model {name!r} is not a local folder ({Path(source).resolve()} does not exist) and {reason}. "
            "Download it while online or pass a local folder."
        ) from error


def model_kind(config) -> str:
    if getattr(config, "model_type", None) != TRM_MODEL_TYPE or config.thought_mode == "none":
        return "baseline"
    return "trm" if config.thought_mode == "trm" else "pause"


def load_model(name: str, gguf_file: str | None = None, trust_remote_code: bool = False,
               compile_thoughts: str | None = None) -> LoadedModel:
    """Model (eval mode, on the current GPU where there is one) and tokenizer for a --model value; the tokenizer pads
    on the left for batched generation. A SmolLM+TRM model is built with this project's classes (no code from its
    folder runs); another model's own code runs only with `trust_remote_code`. `compile_thoughts` ("default" or a
    torch.compile mode) compiles a TRM model's networks (`SmolLMTRMForCausalLM.compile_thoughts`)."""
    import torch

    skip_cudnn_attention()
    source, gguf = resolve_source(name, gguf_file)
    # Explicit either way: left unset, transformers asks on the terminal whether to run a folder's auto_map code.
    tokenizer = _from_pretrained(load_tokenizer, source, name, gguf_file=gguf, trust_remote_code=trust_remote_code)
    # One device, not "auto": auto would spread a small model over every visible GPU and slow each decoding step.
    placement = {"device_map": {"": torch.cuda.current_device()}} if torch.cuda.is_available() else {}
    model = _from_pretrained(load_causal_lm, source, name, gguf_file=gguf, trust_remote_code=trust_remote_code,
                             **placement).eval()
    check_think_token(model.config, tokenizer)
    tokenizer.padding_side = "left"  # new tokens must follow every row's prompt directly
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ValueError(f"model {name!r}: its tokenizer has no chat template; eval prompts are chat prompts as in training")
    kind = model_kind(model.config)
    compiled = bool(compile_thoughts) and kind == "trm" and hasattr(model, "compile_thoughts")
    if compiled:
        model.compile_thoughts(compile_thoughts)
    return LoadedModel(
        name=name, model=model, tokenizer=tokenizer, kind=kind, source=source, gguf_file=gguf,
        config=model.config, num_parameters=model.num_parameters(), compiled=compiled,
    )


def depths_for(loaded: LoadedModel, n_cycles: list[int], n_supervision_steps: list[int]) -> list[Depth | None]:
    """Every (T, N_sup) pair for a TRM model, the config's value where a list is empty; [None] for other models."""
    if loaded.kind != "trm":
        return [None]
    config = loaded.config
    pairs = itertools.product(n_cycles or [config.n_cycles], n_supervision_steps or [config.n_supervision_steps])
    return [Depth(t, n) for t, n in pairs]


# ---------------------------------------------------------------------------------------------------- generation


def uses_think(loaded: LoadedModel, prompt_style: str | None) -> bool:
    if prompt_style is None:
        return loaded.has_thoughts
    if prompt_style not in PROMPT_STYLES:
        raise ValueError(f"prompt_style must be one of {PROMPT_STYLES} or None, got {prompt_style!r}")
    return prompt_style == "think"


def build_prompt(tokenizer, question: str, think: bool, latent_steps: int = 1) -> str:
    return chat_prompt(tokenizer, [{"role": "user", "content": question}], think, latent_steps)


def _eos_ids(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


def tokens_until_eos(row: list[int], eos_ids: set[int]) -> list[int]:
    """The generated ids through the first EOS; what follows it is padding of rows that finished earlier."""
    for i, token in enumerate(row):
        if token in eos_ids:
            return row[: i + 1]
    return row


def _generate_kwargs(loaded: LoadedModel, settings: GenerationSettings, depth: Depth | None) -> dict:
    kwargs = {"max_new_tokens": settings.max_new_tokens, "do_sample": settings.do_sample}
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
    else:  # greedy: drop sampling defaults a checkpoint's generation_config may carry, which would warn
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if depth is not None:
        kwargs.update(n_cycles=depth.n_cycles, n_supervision_steps=depth.n_supervision_steps)
    return kwargs


def generate_batch(
    loaded: LoadedModel, prompts: list[str], settings: GenerationSettings, depth: Depth | None
) -> tuple[list[list[int]], float]:
    """(new token ids of each row through its first EOS, wall-clock seconds of the generate() call)."""
    tokenizer = loaded.tokenizer
    # The prompts are rendered chat templates that already hold BOS and other special tokens.
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(loaded.model.device)
    start = time.perf_counter()
    with torch.inference_mode():
        output = loaded.model.generate(
            **batch, pad_token_id=tokenizer.pad_token_id, **_generate_kwargs(loaded, settings, depth)
        )
    seconds = time.perf_counter() - start
    eos_ids = _eos_ids(loaded.model, tokenizer)
    new_tokens = output[:, batch["input_ids"].shape[1] :].tolist()  # (B, new) after the left-padded prompts
    return [tokens_until_eos(row, eos_ids) for row in new_tokens], seconds


def warm_up(loaded: LoadedModel, task: Task, settings: GenerationSettings) -> None:
    """One untimed single-token generation, so that one-off start-up costs (kernel selection, allocator growth)
    do not land in the first run's latency and skew comparisons between depths. A compiled model also generates at
    two batch sizes above 1 (torch.compile then builds one graph for them all) and at 1 (which it compiles apart), so
    that no compiling lands in a timed call."""
    think = uses_think(loaded, settings.prompt_style)
    prompt = build_prompt(loaded.tokenizer, task.examples[0]["question"], think, settings.latent_steps)
    batch = min(settings.batch_size, len(task.examples))
    sizes = [batch, batch - 1, 1] if loaded.compiled and batch > 2 else [1]
    for size in sizes:
        generate_batch(loaded, [prompt] * size, replace(settings, max_new_tokens=1), None)


def answer_text(tokenizer, token_ids: list[int]) -> tuple[str, str]:
    """(the generation decoded with special tokens, the answer part: after the last `</think>`, specials removed)."""
    generated = tokenizer.decode(token_ids, skip_special_tokens=False)
    answer = generated.rpartition(END_THINK_TOKEN)[2]
    for special in tokenizer.all_special_tokens:
        answer = answer.replace(special, "")
    return generated, answer.strip()


# ---------------------------------------------------------------------------------------------------- scoring


def watched(loaded: LoadedModel):
    """`watch_thoughts()` of a model with thoughts (its calls' list), else a context that yields None (also for
    a model whose own code has no `watch_thoughts`: a folder saved by an earlier version, run as remote code)."""
    if not loaded.has_thoughts or not hasattr(loaded.model, "watch_thoughts"):
        return contextlib.nullcontext()
    return loaded.model.watch_thoughts()


def _batch_records(loaded: LoadedModel, examples: list[dict], prompts: list[str], settings, depth, kind: str,
                   ablation: str | None = None) -> list[dict]:
    if ablation is None:
        with watched(loaded) as calls:
            outputs, seconds = generate_batch(loaded, prompts, settings, depth)
    else:
        answer_normally = functools.partial(generate_batch, loaded, prompts, settings, depth)
        with ablated(loaded.model, ablation, answer_normally), watched(loaded) as calls:
            outputs, seconds = generate_batch(loaded, prompts, settings, depth)
    thoughts = None if calls is None else describe_thoughts(loaded.model, loaded.tokenizer, calls, len(prompts))
    records = []
    for row, (example, prompt, token_ids) in enumerate(zip(examples, prompts, outputs)):
        generated, answer = answer_text(loaded.tokenizer, token_ids)
        extracted = extract_answer(answer, kind) or ""  # "" scores as wrong in the metric
        records.append({
            "id": example["id"], "question": example["question"], "prompt": prompt, "generated": generated,
            "answer_text": answer, "extracted": extracted, "gold": example["answer"],
            "correct": answers_match(extracted, example["answer"], kind), "tokens_generated": len(token_ids),
            "latency_s": seconds / len(prompts), "batch_latency_s": seconds, "batch_size": len(prompts),
        })
        if thoughts is not None:
            records[-1]["thoughts"] = thoughts[row]
        if ablation is not None:
            records[-1]["ablation"] = ablation
        if ablation in DONOR_ABLATIONS:
            records[-1]["donor_gold"] = examples[donor(row, len(examples))]["answer"]
    return records


def run_model(loaded: LoadedModel, task: Task, settings: GenerationSettings, depth: Depth | None,
              ablation: str | None = None) -> Run:
    """Generate and score every example of `task` with one model at one depth (its thoughts ablated, if asked:
    `eval.diagnostics`)."""
    from tqdm.auto import tqdm  # deferred with the other heavy imports

    from transformers import set_seed

    set_seed(settings.seed)  # each run samples from the same state, whatever ran before it
    think = uses_think(loaded, settings.prompt_style)
    records = []
    desc = loaded.name if depth is None else f"{loaded.name} ({depth.label})"
    desc += f", {ablation} thoughts" if ablation else ""
    with tqdm(total=len(task.examples), desc=desc, unit="ex") as progress:
        for start in range(0, len(task.examples), settings.batch_size):
            examples = task.examples[start : start + settings.batch_size]
            prompts = [build_prompt(loaded.tokenizer, ex["question"], think, settings.latent_steps) for ex in examples]
            records += _batch_records(loaded, examples, prompts, settings, depth, task.kind, ablation)
            progress.update(len(examples))
    metrics = score(records)
    if ablation is not None:
        metrics["follows_donor"] = follows_donor(records)
    return Run(model=loaded, depth=depth, records=records, metrics=metrics, ablation=ablation)


def score(records: list[dict]) -> dict:
    """Accuracy with its 95% CI (the `exact_match` metric), mean tokens generated and mean time to answer. A
    prediction `answers_match` found equal to its reference (math-verify, for LaTeX) is passed as the reference."""
    metric = load_metric().compute(
        predictions=[r["gold"] if r["correct"] else r["extracted"] for r in records],
        references=[r["gold"] for r in records],
    )
    n = len(records)
    return {
        **metric,
        "mean_tokens_generated": sum(r["tokens_generated"] for r in records) / n,
        "mean_latency_s": sum(r["latency_s"] for r in records) / n,
    }


def evaluate_models(
    names: list[str],
    task: Task,
    settings: GenerationSettings,
    n_cycles: list[int] | None = None,
    n_supervision_steps: list[int] | None = None,
    gguf_file: str | None = None,
    ablations: tuple[str, ...] = (),
    trust_remote_code: bool = False,
    compile_thoughts: str | None = None,
) -> list[Run]:
    """Every model on `task`, TRM models once per depth, models with thoughts also with each of `ablations` (at
    their configured depth); one model is loaded at a time and freed after its runs."""
    runs = []
    for name in names:
        loaded = load_model(name, gguf_file, trust_remote_code=trust_remote_code, compile_thoughts=compile_thoughts)
        warm_up(loaded, task, settings)
        for depth in depths_for(loaded, n_cycles or [], n_supervision_steps or []):
            runs.append(run_model(loaded, task, settings, depth))
        for ablation in (name for name in ablations if loaded.has_thoughts and applies(loaded.model, name)):
            runs.append(run_model(loaded, task, settings, depths_for(loaded, [], [])[0], ablation))
        loaded.model = None  # free the weights before the next model loads; reports need only the metadata
    if (n_cycles or n_supervision_steps) and not any(run.model.kind == "trm" for run in runs):
        logger.warning("--n_cycles/--n_supervision_steps were given but no model is a TRM model (%s); "
                       "they were ignored", ", ".join(names))
    return runs
