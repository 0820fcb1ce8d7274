"""Ablations that can fail: do the answers use what the thoughts carry?

Each replaces the thoughts of every `<think>` while a model answers, through a forward hook on its thought module
(so any SmolLM+TRM folder, trm or pause, is ablated as it is):

    zeroed      the thoughts are zeros
    shuffled    row i gets the thoughts that row i + 1 of its batch computes in the same call (a roll per call)
    transplant  row i gets the thoughts recorded when problem i + 1 (its donor) was answered normally, call for call
    snapped     each thought is the embedding of the token it decodes to (its readout through the final norm and LM
                head): how the model answers when its thoughts are the written tokens they stand for, which is what
                teacher-forced latent steps (`--thought_teacher_forcing`) trained it to read
    prior_only  (models with `thought_next_token_prior`) the TRM's own outputs are zeros, so every supervision
                step's thoughts are the backbone's next-token reading before each thought alone (before the first
                feedback pass, thoughts 1..K-1 have none and read as the mean token): the backbone decoding the step
                by Jacobi iteration from nothing, what the thoughts are without the recursion

`follows_donor` is the share of problems, among those whose donor has another answer, answered with the donor's answer:
thoughts that carry the computation move the answer with them (near 1), thoughts that carry nothing leave it (near 0).
The transplant replays the donor's calls in order, which is exact when the prompts hold every `<think>` (`latent_steps`
given); where a model emits further `<think>` itself, calls past the donor's recorded ones fall back to a roll.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

ABLATIONS = ("zeroed", "shuffled", "transplant", "snapped", "prior_only")
DONOR_ABLATIONS = ("shuffled", "transplant")  # another problem's thoughts: the answer may follow them
# A call's thoughts (B, K, D) and what they decode from (B, K, D), `ThoughtStep.readout`: an ablation moves both, so
# that what eval records a row's thoughts decode to is what that row was given (with thought_output="token_mixture"
# the thoughts are embedding mixtures, and only the readout decodes).
ThoughtPair = tuple[torch.Tensor, torch.Tensor]


def donor(index: int, size: int) -> int:
    """The batch row whose thoughts row `index` gets: the next one, the last row taking the first's."""
    return (index + 1) % size


def next_row(thoughts: torch.Tensor) -> torch.Tensor:
    return torch.roll(thoughts, shifts=-1, dims=0)  # row i <- row i + 1


def each(function: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[ThoughtPair], ThoughtPair]:
    return lambda pair: tuple(function(tensor) for tensor in pair)


@contextlib.contextmanager
def thoughts_through(model, replace: Callable[[ThoughtPair], ThoughtPair]) -> Iterator[None]:
    """While inside, every `<think>`'s (thoughts, readout) are `replace((thoughts, readout))`."""

    def hook(module, args, thinking):
        # The classes of the model's own code (a folder's copy under trust_remote_code): `Thinking`, `ThoughtStep`;
        # a folder saved before readouts existed has thoughts alone, which are their own readout.
        last = thinking.steps[-1]
        thoughts, readout = replace((last.thoughts, getattr(last, "readout", last.thoughts)))
        step = type(last)(thoughts, last.halt_logit)
        if hasattr(last, "readout"):
            step.readout = readout
        return type(thinking)(thinking.steps[:-1] + [step], thinking.steps_used)

    handle = model.model.thoughts.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def recorded_thoughts(model) -> Iterator[list[ThoughtPair]]:
    """While inside, the (thoughts, readout) of every call are appended to the yielded list (unchanged)."""
    calls: list[ThoughtPair] = []

    def record(pair: ThoughtPair) -> ThoughtPair:
        calls.append(pair)
        return pair

    with thoughts_through(model, record):
        yield calls


def applies(model, ablation: str) -> bool:
    """Whether `ablation` means something for `model`: prior_only needs thoughts with a next-token prior."""
    return ablation != "prior_only" or bool(getattr(model.config, "thought_next_token_prior", False))


@contextlib.contextmanager
def ablated(model, ablation: str, answer_normally: Callable[[], object]) -> Iterator[None]:
    """While inside, the model answers with its thoughts ablated (`ABLATIONS`)."""
    if ablation != "prior_only":
        with thoughts_through(model, replacement(model, ablation, answer_normally)):
            yield
        return
    if not applies(model, ablation):
        raise ValueError("prior_only ablates the next-token prior: the model has none (thought_next_token_prior).")
    trm = model.model.thoughts
    # The outputs are RMSNorm(W y) * out_norm.weight: a zero weight makes them zeros; the prior's weight, any positive.
    weights = {trm.out_norm.weight: 0.0, trm.prior_scale: 1.0}
    saved = [weight.detach().clone() for weight in weights]
    with torch.no_grad():
        for weight, value in weights.items():
            weight.fill_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            for weight, value in zip(weights, saved):
                weight.copy_(value)


def replacement(model, ablation: str, answer_normally: Callable[[], object]) -> Callable[[ThoughtPair], ThoughtPair]:
    """The thoughts function of an ablation; the transplant first answers normally to record its donors."""
    if ablation == "zeroed":
        return each(torch.zeros_like)
    if ablation == "shuffled":
        return each(next_row)
    if ablation == "snapped":  # the readout stays: it decodes to the token the thought now is
        return lambda pair: (decoded_tokens(model, pair[1]).to(pair[0].dtype), pair[1])
    if ablation != "transplant":
        raise ValueError(f"unknown thought replacement {ablation!r}; known: {', '.join(ABLATIONS[:4])}")
    with recorded_thoughts(model) as calls:
        answer_normally()
    donors = iter(calls)
    return lambda pair: each(next_row)(next(donors, pair))


def decoded_tokens(model, readout: torch.Tensor) -> torch.Tensor:
    """(B, K, D) the input embedding of the token each thought's readout (B, K, D) decodes to, read as
    `thought_logits` reads it (the final norm, then the LM head), spelled out for folders whose code predates it."""
    logits = model.lm_head(model.model.language_model.norm(readout))
    return model.get_input_embeddings()(logits.argmax(dim=-1))


def follows_donor(records: list[dict]) -> float | None:
    """Among records whose donor's gold answer differs from theirs, the share answered with the donor's."""
    differing = [r for r in records if r.get("donor_gold") is not None and r["donor_gold"] != r["gold"]]
    if not differing:
        return None
    return sum(r["extracted"] == r["donor_gold"] for r in differing) / len(differing)
