"""Configuration of SmolLM3+TRM: a decoder-only language model with a Tiny Recursive Model for latent thoughts.

This file is remote code: it is copied into every checkpoint and imports only transformers.
"""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

THOUGHT_WINDOWS = ("append", "slide")
THOUGHT_MODES = ("trm", "pause", "none")
THOUGHT_OUTPUTS = ("vector", "token_mixture")
FORCED_LM_SCOPES = ("forced", "all")
# Both model classes, whichever of them saves a folder (transformers writes only the saving class's entry).
MODEL_AUTO_MAP = {
    "AutoModel": "modeling_smollm_trm.SmolLMTRMModel",
    "AutoModelForCausalLM": "modeling_smollm_trm.SmolLMTRMForCausalLM",
}


@strict
class SmolLMTRMConfig(PreTrainedConfig):
    r"""
    Configuration of [`SmolLMTRMForCausalLM`].

    Args:
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the decoder-only backbone (any model type `AutoModelForCausalLM` knows). Defaults to the shape
            of SmolLM3-3B.
        think_token_id (`int`, *optional*, defaults to 128002):
            The token after which thoughts are inserted (`<think>` in SmolLM3's vocabulary).
        num_latents (`int`, *optional*, defaults to 256):
            K, the number of thought positions each `<think>` inserts.
        trm_hidden_size (`int`, *optional*, defaults to 512):
            Width d of the compressor's output and of the recursive network.
        trm_num_layers (`int`, *optional*, defaults to 2):
            Transformer blocks in the recursive network.
        trm_num_heads (`int`, *optional*, defaults to 8):
            Attention heads in the compressor and the recursive network; must divide `trm_hidden_size`.
        trm_expansion (`float`, *optional*, defaults to 4.0):
            Width of the SwiGLU feed-forward layers relative to `trm_hidden_size`.
        trm_rms_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the TRM's RMSNorms.
        trm_qk_norm (`bool`, *optional*, defaults to `False`):
            RMSNorm of each attention head's queries and keys in the compressor and the recursive network (learned
            scales): bounded attention logits, against a softmax saturated onto one position by a few large updates.
        n_latent_steps (`int`, *optional*, defaults to 6):
            n, the updates of z per cycle.
        n_cycles (`int`, *optional*, defaults to 3):
            T, the recursion cycles per supervision step; the first T-1 run without gradient.
        n_supervision_steps (`int`, *optional*, defaults to 1):
            N_sup, deep-supervision steps; (y, z) are carried and detached between them.
        halt_loss_weight (`float`, *optional*, defaults to 0.5):
            Weight of the halting head's BCE loss in the total loss.
        probe_loss_weight (`float`, *optional*, defaults to 0.0):
            Weight of the step probe's cross-entropy in the total loss, given `thought_labels`: the thoughts of each
            `<think>` that replaces a written reasoning step must decode that step's tokens, thought i its i-th
            token, through the backbone's final norm and LM head (step-level supervision of latents, as SIM-CoT).
        forced_lm_loss_weight (`float`, *optional*, defaults to 0.0):
            Weight of the backbone's next-token cross-entropy over forced thoughts (`forced_thoughts` in training,
            `--thought_teacher_forcing`): each forced token is predicted from the column before it (the `<think>`
            token for the first, thought i-1 for thought i), so the backbone learns to write a step inside the
            thought positions as it writes written reasoning. That reading is what `thought_next_token_prior` adds.
        forced_lm_scope (`str`, *optional*, defaults to `"forced"`):
            Which thoughts `forced_lm_loss_weight` scores. `"forced"`: the forced ones only. `"all"`: every labelled
            thought (`thought_labels`), forced or the module's own, so the backbone also learns to write a step's
            next token from thoughts that are still mixtures, the way it reads them at inference, where none is
            forced; its gradient reaches the thought module through the thoughts it reads.
        score_step_answers (`bool`, *optional*, defaults to `True`):
            With `n_supervision_steps` >= 2 in training: score the answer after every supervision step's thoughts
            (deep supervision as in the TRM paper). `False`: only after the last step's, the thoughts the answer
            reads; the earlier steps are scored by the step probe alone, and with `thought_feedback` their reading
            runs without gradient. A cheaper step (no backward through the earlier answers), and the answer is not
            asked to do without thoughts that are still unfinished.
        thought_feedback (`bool`, *optional*, defaults to `False`):
            Between supervision steps (`n_supervision_steps` >= 2, `thought_mode="trm"`), the backbone reads the
            step's thoughts on the context's cache, and the compressor reads those hidden states beside the context
            for the next step: the recursion sees what the language model computes from its thoughts (for a
            written step, the next token at every position), not only the context before them.
        feedback_every_cycle (`bool`, *optional*, defaults to `False`):
            With `thought_feedback`: the backbone also reads the thoughts after every cycle but a step's last, and the
            next cycle's x is recomputed from that reading, so each cycle sees what the language model makes of the
            last one's thoughts and `n_cycles` counts rounds of the language model in the loop, not only of the TRM.
            The reads between cycles run without gradient, as the cycles before the last do. Without halting
            (`halt_threshold=1.0`, which checks only at a step's end), a forward of N_sup steps of T cycles then
            computes what N_sup * T steps of one cycle compute (the detach between steps changes no value).
        thought_output (`str`, *optional*, defaults to `"vector"`):
            What the thought module's K outputs become before the backbone reads them. `"vector"`: thoughts in the
            embedding space, as they are. `"token_mixture"`: each output is read as tokens (the backbone's final norm
            and its tied LM head) and the thought is the softmax mixture of the token embeddings, so a thought that
            decodes to a token is that token's embedding and the backbone reads it as it reads written text.
        thought_next_token_prior (`bool`, *optional*, defaults to `False`):
            With `thought_feedback` and `thought_output="token_mixture"`: before a thought is read as tokens, the
            backbone's next-token reading at the position before it is added to the TRM's output (weighed by a
            learned scale): the `<think>` token's for the first thought, and from the second supervision step on,
            thought i-1's in the feedback pass for thought i. So each supervision step can write what the language
            model would write next after the last step's thoughts, one more token of a written step per step (a
            Jacobi iteration of decoding it), and the TRM learns what to change: it need not find that reading in
            the feedback by attention.
        thought_prior_gain (`float`, *optional*, defaults to 1.0):
            With `thought_next_token_prior`: a factor on the prior's learned weight, in training and inference. Above
            1 the thoughts follow the backbone's next-token reading more and the TRM's own outputs less; a trained
            model's value can be raised for inference (measured on held-out problems, see docs/RESULTS.md).
        snap_thoughts (`bool`, *optional*, defaults to `False`):
            With `thought_output="token_mixture"`: every thought is the embedding of the token its mixture weighs
            most, at every supervision step, so the feedback passes and the answer read exact tokens, as in written
            reasoning. In training the gradient still flows through the mixture (straight-through: the token
            forward, the mixture's gradient backward), so a model trained with it answers from the discrete thoughts
            it was trained on. Set on a model trained without it, it changes inference only, for better or worse
            (measured on held-out problems, see docs/RESULTS.md).
        halt_threshold (`float`, *optional*, defaults to 1.0):
            At inference, a row stops its supervision steps once its halting probability exceeds this. 1.0 never
            stops: every supervision step runs, as in training and as the TRM reference evaluates. Below 1, adaptive
            halting, as good as the halting head: one that cannot tell problems apart stops every row at once.
        thought_window (`str`, *optional*, defaults to `"append"`):
            `"append"`: thoughts are added after `<think>`. `"slide"`: positions after the thoughts no longer attend
            to the oldest K real tokens of the row (2K after two `<think>`, ...), so the attended window keeps its
            length; thoughts and the compressor still see the whole context.
        thought_mode (`str`, *optional*, defaults to `"trm"`):
            `"trm"`: thoughts come from the recursion. `"pause"`: K learned vectors (the control for experiments).
            `"none"`: plain backbone, `<think>` is an ordinary token.
    """

    model_type = "smollm_trm"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="smollm3")}

    text_config: dict | PreTrainedConfig | None = None
    think_token_id: int = 128002
    num_latents: int = 256
    trm_hidden_size: int = 512
    trm_num_layers: int = 2
    trm_num_heads: int = 8
    trm_expansion: float = 4.0
    trm_rms_norm_eps: float = 1e-5
    trm_qk_norm: bool = False
    n_latent_steps: int = 6
    n_cycles: int = 3
    n_supervision_steps: int = 1
    halt_loss_weight: float = 0.5
    probe_loss_weight: float = 0.0
    forced_lm_loss_weight: float = 0.0
    forced_lm_scope: str = "forced"
    score_step_answers: bool = True
    thought_feedback: bool = False
    feedback_every_cycle: bool = False
    thought_output: str = "vector"
    thought_next_token_prior: bool = False
    thought_prior_gain: float = 1.0
    snap_thoughts: bool = False
    halt_threshold: float = 1.0
    thought_window: str = "append"
    thought_mode: str = "trm"
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        # A composite config starts without an attention implementation and hands that to its sub-configs: given a
        # loaded backbone's config (`from_base`, which shares it with the backbone), keep the one it was loaded with.
        # Left unset, attention falls back to eager without the causal mask, and every position sees later tokens.
        attention = getattr(self.text_config, "_attn_implementation", None)
        super().__post_init__(**kwargs)
        if attention is not None and self._attn_implementation is None:
            self._attn_implementation = attention
        # The LM head is the backbone's, so tying follows the backbone's own setting.
        self.tie_word_embeddings = self.text_config.tie_word_embeddings
        if getattr(self, "auto_map", None) is None:  # a loaded config keeps its own (the Hub prefixes the repo id)
            self.auto_map = dict(MODEL_AUTO_MAP)
        self._check_settings()

    @classmethod
    def thought_settings(cls) -> tuple[str, ...]:
        """The settings of the thoughts this class adds to the backbone's config (what `train_sft.py` takes as
        flags); `text_config` is the backbone's and `tie_word_embeddings` follows it."""
        return tuple(name for name in cls.__annotations__ if name not in ("text_config", "tie_word_embeddings"))

    def _check_settings(self) -> None:
        text = self.text_config
        if text.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or getattr(text, "is_encoder_decoder", False):
            raise ValueError(
                f"text_config: the backbone must be a decoder-only causal LM known to AutoModelForCausalLM, "
                f"got model_type={text.model_type!r}."
            )
        if self.thought_mode not in THOUGHT_MODES:
            raise ValueError(f"thought_mode must be one of {THOUGHT_MODES}, got {self.thought_mode!r}.")
        if self.thought_window not in THOUGHT_WINDOWS:
            raise ValueError(f"thought_window must be one of {THOUGHT_WINDOWS}, got {self.thought_window!r}.")
        if not 0 <= self.think_token_id < text.vocab_size:
            raise ValueError(
                f"think_token_id={self.think_token_id} is outside the backbone's vocabulary "
                f"(vocab_size={text.vocab_size}); add `<think>` to the tokenizer and pass its id."
            )
        for name in ("num_latents", "trm_hidden_size", "trm_num_layers", "trm_num_heads", "n_latent_steps",
                     "n_cycles", "n_supervision_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.trm_hidden_size % self.trm_num_heads:
            raise ValueError(
                f"trm_num_heads={self.trm_num_heads} must divide trm_hidden_size={self.trm_hidden_size}."
            )
        feedback_rounds = self.n_supervision_steps >= 2 or (self.feedback_every_cycle and self.n_cycles >= 2)
        if self.thought_feedback and (self.thought_mode != "trm" or not feedback_rounds):
            raise ValueError(
                f"thought_feedback feeds the backbone's reading of the thoughts to the next supervision step (with "
                f"feedback_every_cycle, to the next cycle): it needs thought_mode='trm' and n_supervision_steps >= 2, "
                f"or feedback_every_cycle with n_cycles >= 2; got thought_mode={self.thought_mode!r}, "
                f"n_supervision_steps={self.n_supervision_steps}, n_cycles={self.n_cycles}, "
                f"feedback_every_cycle={self.feedback_every_cycle}."
            )
        if self.feedback_every_cycle and not self.thought_feedback:
            raise ValueError(
                "feedback_every_cycle feeds the backbone's reading of the thoughts to every cycle after the first: it "
                "needs thought_feedback=True."
            )
        if self.thought_output not in THOUGHT_OUTPUTS:
            raise ValueError(f"thought_output must be one of {THOUGHT_OUTPUTS}, got {self.thought_output!r}.")
        if self.forced_lm_scope not in FORCED_LM_SCOPES:
            raise ValueError(f"forced_lm_scope must be one of {FORCED_LM_SCOPES}, got {self.forced_lm_scope!r}.")
        if self.thought_output == "token_mixture" and self.thought_mode == "none":
            raise ValueError("thought_output='token_mixture' shapes thoughts: thought_mode='none' has none.")
        if self.thought_output == "token_mixture" and not text.tie_word_embeddings:
            raise ValueError("thought_output='token_mixture' scores thoughts against the token embeddings as the LM "
                             "head does: it needs a backbone with tie_word_embeddings=True.")
        if self.snap_thoughts and self.thought_output != "token_mixture":
            raise ValueError(f"snap_thoughts replaces each thought's token mixture by its heaviest token: it needs "
                             f"thought_output='token_mixture', got {self.thought_output!r}.")
        if self.thought_next_token_prior and not (self.thought_feedback and self.thought_output == "token_mixture"):
            raise ValueError(
                f"thought_next_token_prior adds the backbone's next-token reading of the feedback pass to thoughts "
                f"read as tokens: it needs thought_feedback=True and thought_output='token_mixture', got "
                f"thought_feedback={self.thought_feedback}, thought_output={self.thought_output!r}."
            )
        if not 0.0 < self.halt_threshold <= 1.0:
            raise ValueError(f"halt_threshold must lie in (0, 1] (1: never halt), got {self.halt_threshold}.")
        for name in ("halt_loss_weight", "probe_loss_weight", "forced_lm_loss_weight"):  # `not >=` also refuses NaN
            if not getattr(self, name) >= 0 or getattr(self, name) == float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}.")
        for name in ("trm_expansion", "trm_rms_norm_eps", "thought_prior_gain"):
            if not 0 < getattr(self, name) < float("inf"):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}.")
        if round(self.trm_expansion * self.trm_hidden_size) < 1:
            raise ValueError(f"trm_expansion={self.trm_expansion} leaves the TRM's feed-forward layers no width at "
                             f"trm_hidden_size={self.trm_hidden_size}.")


__all__ = ["SmolLMTRMConfig"]
