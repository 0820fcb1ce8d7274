"""The curriculum from written to latent reasoning (Coconut, arXiv 2412.06769), for `--reasoning curriculum`.

A row's written reasoning is a list of steps (its lines). Stage 0 trains on every step written; at stage k the first k
steps are latent: each becomes one `<think>`, whose K thoughts the model computes from everything before it (the
earlier thoughts included), and the remaining steps follow written, then `</think>` and the answer:

    stage 0   <think>7+5=12\\n12*3=36</think>36        (the opening `<think>` is the prompt's, as at inference)
    stage 1   <think>12*3=36</think>36                 (one latent step: its thoughts must carry 12)
    stage 2   <think><think></think>36                 (every step latent; the last stage of a 2-step row)

With `pad_latent_steps`, a row whose steps are all latent gets one `<think>` per stage reached (Coconut's
`pad_latent_to_max`), so that the last stage asks every row for the same number of latent steps, the number a prompt
gives at inference. With `spare_latent_steps`, a fully latent row of the last stage instead gets up to that many
spare `<think>` after its last step, empty steps whose `<think>` tokens are not scored: the model learns that a
latent step after the last leaves the answer alone, and still learns to close after its last step.

Every row is prepared at every stage; `CurriculumSampler` draws the rows of the current stage, and a share `mix` of
them from an earlier stage, which keeps what those stages taught (forgetting is the known failure of stage-wise
training).

With the step probe (`probe_loss_weight`), each latent step's thoughts must also decode the written step they replace
(`staged_thought_labels`), which gives the thoughts a target of their own besides the tokens that read them.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field

import torch

from modeling_smollm_trm import THINK_TOKENS

THINK_TOKEN, END_THINK_TOKEN = THINK_TOKENS
STAGE_COLUMN = "curriculum_stage"
SPARE_COLUMN = "spare_latent_steps"  # a row's spare <think> (curriculum_spare_latent_steps), the last of its <think>


@dataclass(kw_only=True)  # keyword-only: a dataclass with required fields (SFTDataArguments) can extend it
class CurriculumArguments:
    """How `--reasoning curriculum` moves from written to latent steps (parse with `HfArgumentParser`)."""

    curriculum_stages: int = field(
        default=4, metadata={"help": "Latent stages after stage 0; at the last one every step (up to this many) is "
                                     "latent."})
    curriculum_steps_per_stage: int | None = field(
        default=None, metadata={"help": "Optimizer steps of each stage before the last, which runs to the end "
                                        "(default: max_steps split evenly over the stages trained)."})
    curriculum_first_stage: int = field(
        default=0, metadata={"help": "The stage training starts at; the earlier ones are skipped. With a model "
                                     "trained through them as --model_name_or_path: e.g. the last stage, to train "
                                     "it longer without training the others again."})
    curriculum_mix: float = field(
        default=0.0, metadata={"help": "Share of each batch's rows drawn from an earlier stage (against forgetting)."})
    curriculum_reset_optimizer: bool = field(
        default=True, metadata={"help": "Start every stage with a fresh optimizer state (Coconut resets it)."})
    curriculum_stage_warmup_steps: int = field(
        default=0, metadata={"help": "Optimizer steps over which the learning rate ramps up again at the start of each "
                                     "latent stage: after the optimizer reset, AdamW's first updates are full-size "
                                     "steps in the direction of sign(gradient) for every weight."})
    curriculum_last_stage_decay: float = field(
        default=0.0, metadata={"help": "Share of the last stage, at its end, over which the learning rate decays to 0 "
                                       "(a cosine), so that training ends annealed instead of at the full rate of the "
                                       "earlier stages; 0 keeps the schedule's own rate to the end."})
    curriculum_pad_latent_steps: bool = field(
        default=False, metadata={"help": "A row whose steps are all latent gets one <think> per stage reached, so the "
                                         "last stage has the same number of latent steps for every row."})
    curriculum_spare_latent_steps: int = field(
        default=0, metadata={"help": "A row of the last stage whose steps are all latent gets 0 to this many spare "
                                     "<think> after its last step (the number drawn from the row's text, so the same "
                                     "data gives the same rows): empty steps (labelled with curriculum_step_fill) "
                                     "whose <think> tokens are not scored, so that more latent steps than a problem "
                                     "needs leave its answer alone while the model still learns to close after its "
                                     "last step. A batch runs as many latent steps as its longest row."})
    curriculum_step_fill: str | None = field(
        default=None, metadata={"help": "With the step probe: a token, as text (e.g. a newline), that labels the "
                                        "thought positions after a latent step's own tokens, so that all K thoughts "
                                        "have a target (the probe, teacher forcing and the forced-step loss): a step "
                                        "decoded by Jacobi iteration then ends in this token instead of running on "
                                        "into text nothing trained; a padding <think> (curriculum_pad_latent_steps) "
                                        "is labelled with it at every thought, an empty step. None: those positions "
                                        "have no target."})

    def __post_init__(self) -> None:
        if self.curriculum_stages < 1:
            raise ValueError(f"curriculum_stages must be >= 1, got {self.curriculum_stages}.")
        if not 0 <= self.curriculum_first_stage <= self.curriculum_stages:
            raise ValueError(f"curriculum_first_stage must lie in [0, curriculum_stages={self.curriculum_stages}], "
                             f"got {self.curriculum_first_stage}.")
        if self.curriculum_steps_per_stage is not None and self.curriculum_steps_per_stage < 1:
            raise ValueError(f"curriculum_steps_per_stage must be >= 1, got {self.curriculum_steps_per_stage}.")
        if self.curriculum_stage_warmup_steps < 0:
            raise ValueError(f"curriculum_stage_warmup_steps must be >= 0, got {self.curriculum_stage_warmup_steps}.")
        if not 0.0 <= self.curriculum_last_stage_decay <= 1.0:
            raise ValueError(f"curriculum_last_stage_decay must lie in [0, 1], got {self.curriculum_last_stage_decay}.")
        if self.curriculum_spare_latent_steps < 0:
            raise ValueError(f"curriculum_spare_latent_steps must be >= 0, got {self.curriculum_spare_latent_steps}.")
        if self.curriculum_spare_latent_steps and self.curriculum_pad_latent_steps:
            raise ValueError("curriculum_spare_latent_steps and curriculum_pad_latent_steps both add <think> after a "
                             "row's last step; set one of them.")
        if not 0.0 <= self.curriculum_mix < 1.0:
            raise ValueError(f"curriculum_mix must lie in [0, 1), got {self.curriculum_mix}.")


def split_steps(reasoning: str) -> list[str]:
    """The steps of written reasoning: its non-empty lines, stripped."""
    return [line.strip() for line in reasoning.split("\n") if line.strip()]


def latent_steps(num_steps: int, stage: int, pad: bool) -> int:
    """How many of a row's `num_steps` steps are latent at `stage` (with `pad`, a fully latent row counts every
    stage reached)."""
    return stage if pad and stage >= num_steps else min(stage, num_steps)


def spare_latent_steps(num_steps: int, stage: int, most: int, row_text: str) -> int:
    """How many spare `<think>` a row of `num_steps` steps gets at `stage`: none unless every step is latent there,
    else 0 to `most`, drawn from the row's text (a checksum, not Python's salted `hash`: preparing the data again,
    in any process, gives the same rows)."""
    if most == 0 or stage < num_steps:
        return 0
    return zlib.crc32(row_text.encode()) % (most + 1)


def staged_completion(steps: list[str], answer: str, stage: int, pad: bool, spare: int = 0) -> str:
    """The completion of a row at `stage`: one `<think>` per latent step (at least the opening one), `spare` more
    after a fully latent row's last, the written rest, `</think>`, the answer."""
    latent = latent_steps(len(steps), stage, pad)
    if spare and latent < len(steps):
        raise ValueError(f"Spare latent steps follow the last step; at stage {stage}, {len(steps) - latent} of the "
                         "row's steps are still written.")
    return THINK_TOKEN * (max(1, latent) + spare) + "\n".join(steps[latent:]) + END_THINK_TOKEN + answer


def staged_thought_labels(step_ids: list[list[int]], stage: int, pad: bool,
                          empty_step: list[int] | None = None, spare: int = 0) -> list[list[int]]:
    """For each `<think>` of the completion `staged_completion` writes at `stage`, the tokens of the written step its
    thoughts replace, for the step probe: the latent steps' own, none for the opening `<think>` of a fully written
    row, and `empty_step` (none by default) for a padding or spare one."""
    latent = latent_steps(len(step_ids), stage, pad)
    if latent == 0:
        return [[]]
    return [step_ids[j] if j < len(step_ids) else list(empty_step or []) for j in range(latent + spare)]


def stage_at(step: int, steps_per_stage: int, num_stages: int, first_stage: int = 0) -> int:
    """The stage that optimizer step `step` (0-based) trains: `first_stage`, then each later stage for
    `steps_per_stage` steps; the last stage runs to the end."""
    return min(first_stage + step // steps_per_stage, num_stages)


class CurriculumSampler(torch.utils.data.Sampler):
    """Row indices in training order: each optimizer step's rows come from the stage `stage_at` gives, a share `mix`
    of them from an uniformly drawn earlier stage. Within a stage, rows are drawn in a fresh shuffled order each pass,
    seeded: the same arguments give the same order, so a resumed run (which skips the batches already seen) continues
    exactly."""

    def __init__(self, stages: list[int], rows_per_step: int, total_steps: int, steps_per_stage: int,
                 num_stages: int, mix: float, seed: int, first_stage: int = 0):
        self.by_stage: dict[int, list[int]] = {}
        for index, stage in enumerate(stages):
            self.by_stage.setdefault(stage, []).append(index)
        missing = sorted(set(range(num_stages + 1)) - set(self.by_stage))
        if missing:
            raise ValueError(f"The curriculum has no training row for stage(s) {missing}.")
        self.rows_per_step, self.total_steps = rows_per_step, total_steps
        self.steps_per_stage, self.num_stages = steps_per_stage, num_stages
        self.mix, self.seed, self.first_stage = mix, seed, first_stage

    def __len__(self) -> int:
        return self.rows_per_step * self.total_steps

    def __iter__(self):
        rng = random.Random(self.seed)
        queues: dict[int, list[int]] = {stage: [] for stage in self.by_stage}

        def draw(stage: int) -> int:
            if not queues[stage]:
                queues[stage] = rng.sample(self.by_stage[stage], len(self.by_stage[stage]))
            return queues[stage].pop()

        for step in range(self.total_steps):
            stage = stage_at(step, self.steps_per_stage, self.num_stages, self.first_stage)
            for _ in range(self.rows_per_step):
                earlier = stage > 0 and rng.random() < self.mix
                yield draw(rng.randrange(stage) if earlier else stage)
