"""SmolLM3+TRM: a decoder-only language model that thinks in latent space with a Tiny Recursive Model.

Notation, as in "Less is More: Recursive Reasoning with Tiny Networks" (arXiv 2510.04871):

- K      `num_latents`: thought positions inserted after every `<think>` token.
- x      [B, K, d] the context, compressed from the backbone's last-layer hidden states by cross-attention.
- y, z   [B, K, d] the answer and the latent reasoning state; both start from fixed buffers.
- f      one small network (`TinyRecursiveNetwork`) shared by every update.
- n      `n_latent_steps`: one cycle is `z = f(x + y + z)` n times, then `y = f(y + z)`.
- T      `n_cycles`: cycles per supervision step; the first T-1 run without gradient, the last backpropagates.
- N_sup  `n_supervision_steps`: deep supervision; (y, z) are carried and detached between steps, each step's
         thoughts are scored by the answer loss, and a halting head on y learns when the answer is right.

The thoughts are y projected into the backbone's embedding space. They become K positions of the sequence right
after `<think>`, with consecutive position ids, and every later position attends to them. Columns of the backbone's
stream are of three kinds (`PAD`, `TOKEN`, `THOUGHT`); `ThoughtCache` records them so that masks, positions and the
compressor's input stay right across `generate()` steps and beam reordering.

A chunk of input (a training batch or a prompt) is cut after each `<think>`: segment j of a row ends with its j-th
`<think>`. Segments are laid out in blocks of a common width (left-aligned, padding masked), so that block j's
tokens, then block j's K thoughts, run through the backbone for the whole batch at once while the KV cache keeps
everything before them: the context is computed once and the answer's gradient reaches the TRM through the cache.

`SmolLMTRMModel` is the backbone's body with the thoughts (layout, cache bookkeeping, thinking) and returns hidden
states aligned with `input_ids`; `SmolLMTRMForCausalLM` adds the LM head, the loss and generation. One module behind
one interface gives the thoughts: `HiddenStateTRM` (the recursion, with its deep-supervision loop) or `PauseThoughts`
(the control); `Depth` is the validated (T, N_sup) of a call.

This file is remote code: it is copied into every checkpoint and imports only torch, transformers and its config.
"""

import contextlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import (AutoModel, AutoModelForCausalLM, DynamicCache, GenerationMixin, LogitsProcessor,
                          LogitsProcessorList, PreTrainedModel)
from transformers import initialization as init
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.masking_utils import create_causal_mask
from transformers.utils import ModelOutput, logging

logger = logging.get_logger(__name__)


def _sibling_config_module():
    """`configuration_smollm_trm` from the file beside this one, not whatever module of that name `sys.path` finds
    first (a file of that name in the working directory would otherwise run in its place)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configuration_smollm_trm.py")
    loaded = sys.modules.get("configuration_smollm_trm")
    if loaded is not None:
        if os.path.abspath(getattr(loaded, "__file__", "") or "") != path:
            raise ImportError(f"configuration_smollm_trm is already imported from {loaded.__file__}, not from {path} "
                              "beside modeling_smollm_trm: a file of that name earlier on sys.path shadows it.")
        return loaded
    spec = importlib.util.spec_from_file_location("configuration_smollm_trm", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["configuration_smollm_trm"] = module
    spec.loader.exec_module(module)
    return module


try:
    from .configuration_smollm_trm import SmolLMTRMConfig
except ImportError:  # imported as a plain module of the installed project
    SmolLMTRMConfig = _sibling_config_module().SmolLMTRMConfig

PAD, TOKEN, THOUGHT = 0, 1, 2  # kinds of the backbone's stream columns
THINK_TOKENS = ("<think>", "</think>")
HALT_BIAS_INIT = -5.0  # as in the TRM reference: the halting head starts by never halting
IGNORE_INDEX = -100
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the ones whose compiled code replays CUDA graphs
# Scored columns per LM-head chunk of the training loss: at most (chunk, V) float32 logits exist at a time.
LOSS_CHUNK_TOKENS = 4096


# ----------------------------------------------------------------------------------------------------------------
# The tiny recursive network
# ----------------------------------------------------------------------------------------------------------------


class SwiGLU(nn.Module):
    def __init__(self, width: int, expansion: float):
        super().__init__()
        inner = int(round(expansion * width))
        self.gate_up = nn.Linear(width, 2 * inner, bias=False)
        self.down = nn.Linear(inner, width, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(h).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


def split_heads(h: torch.Tensor, num_heads: int) -> torch.Tensor:
    batch, length, width = h.shape
    return h.view(batch, length, num_heads, width // num_heads).transpose(1, 2)  # (B, H, L, d/H)


def merge_heads(h: torch.Tensor) -> torch.Tensor:
    batch, heads, length, head_dim = h.shape
    return h.transpose(1, 2).reshape(batch, length, heads * head_dim)  # (B, L, d)


class QKNorm(nn.Module):
    """`trm_qk_norm`: RMSNorm of each head's queries and keys (learned scales), which bounds the attention logits, so
    that a few large updates cannot saturate the softmax onto one position, where its gradient vanishes for good.
    Without it, the identity."""

    def __init__(self, config: SmolLMTRMConfig):
        super().__init__()
        head_dim = config.trm_hidden_size // config.trm_num_heads
        self.enabled = config.trm_qk_norm
        if self.enabled:
            self.q_norm = nn.RMSNorm(head_dim, eps=config.trm_rms_norm_eps)
            self.k_norm = nn.RMSNorm(head_dim, eps=config.trm_rms_norm_eps)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.q_norm(q), self.k_norm(k)) if self.enabled else (q, k)  # (B, H, L, d/H) each


class TransformerBlock(nn.Module):
    """Non-causal self-attention over the K latents and a SwiGLU, post-norm with RMSNorm as in the TRM."""

    def __init__(self, config: SmolLMTRMConfig):
        super().__init__()
        width = config.trm_hidden_size
        self.num_heads = config.trm_num_heads
        self.eps = config.trm_rms_norm_eps
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.qk_norm = QKNorm(config)
        self.o_proj = nn.Linear(width, width, bias=False)
        self.mlp = SwiGLU(width, config.trm_expansion)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(t, self.num_heads) for t in self.qkv(h).chunk(3, dim=-1))
        q, k = self.qk_norm(q, k)
        attended = merge_heads(F.scaled_dot_product_attention(q, k, v))  # (B, K, d)
        h = F.rms_norm(h + self.o_proj(attended), (h.shape[-1],), eps=self.eps)
        return F.rms_norm(h + self.mlp(h), (h.shape[-1],), eps=self.eps)


class TinyRecursiveNetwork(nn.Module):
    """f: the one network that every recursion step shares.

    It runs T * (n + 1) times per supervision step on a small (B, K, d), so a step of a small model is bound by kernel
    launches, most of them this network's: `compile_layers` fuses its kernels (torch.compile), and falls back to eager
    with a warning where the compiler fails."""

    def __init__(self, config: SmolLMTRMConfig):
        super().__init__()
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.trm_num_layers))
        self.compiled: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.graphed = False  # the compiled code replays CUDA graphs

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                out = self.compiled(h)
            except compiler_errors() as error:
                logger.warning(f"Compiling the TRM's network failed ({type(error).__name__}); running it eagerly.")
                self.compiled = None
            else:
                # A CUDA graph returns its static output buffer, which its next replay overwrites: the recursion
                # keeps y while z = f(x + y + z) runs the same graph n times, so each output is copied out.
                return out.clone() if self.graphed else out
        return self.run_layers(h)

    def run_layers(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            h = layer(h)
        return h

    def compile_layers(self, mode: str | None = None) -> None:
        """Run the layers through `torch.compile(mode=mode)` from now on (the weights stay this module's own)."""
        self.compiled = torch.compile(self.run_layers, mode=mode)
        self.graphed = mode in CUDA_GRAPH_MODES

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "compiled": None, "graphed": False}  # the weights, not the compiled code


class LatentAttentionCompressor(nn.Module):
    """Perceiver-style: K learned queries cross-attend to the context's hidden states [B, L, D] and give x [B, K, d]."""

    def __init__(self, config: SmolLMTRMConfig):
        super().__init__()
        width, backbone_width = config.trm_hidden_size, config.text_config.hidden_size
        self.num_heads = config.trm_num_heads
        self.eps = config.trm_rms_norm_eps
        self.latents = nn.Parameter(torch.empty(config.num_latents, width))
        self.context_norm = nn.RMSNorm(backbone_width, eps=config.trm_rms_norm_eps)
        self.q_proj = nn.Linear(width, width, bias=False)
        self.kv_proj = nn.Linear(backbone_width, 2 * width, bias=False)
        self.qk_norm = QKNorm(config)
        self.o_proj = nn.Linear(width, width, bias=False)
        self.mlp = SwiGLU(width, config.trm_expansion)

    def forward(self, context: torch.Tensor, context_mask: torch.Tensor,
                state: torch.Tensor | None = None) -> torch.Tensor:
        """x from the context; a `state` [B, K, d] (the recursion's y so far) joins the queries, so that what is read
        can depend on what has been worked out (a re-read of the context, not part of x itself)."""
        batch = context.shape[0]
        # A row with no visible column (all padding) would give NaN; its thoughts are never used, so let it see all.
        context_mask = context_mask | ~context_mask.any(dim=-1, keepdim=True)
        asking = self.latents if state is None else self.latents + state
        queries = self.q_proj(asking).expand(batch, -1, -1)  # (B, K, d)
        keys, values = self.kv_proj(self.context_norm(context)).chunk(2, dim=-1)  # (B, L, d) each
        queries, keys = self.qk_norm(split_heads(queries, self.num_heads), split_heads(keys, self.num_heads))
        attended = F.scaled_dot_product_attention(
            queries, keys, split_heads(values, self.num_heads), attn_mask=context_mask[:, None, None, :],
        )
        width = (self.latents.shape[-1],)
        # What was read is brought to the scale of the latents (RMS 1) before they are added: at its init scale it is
        # a few percent of them, and x, hence every thought, would start nearly the same for every context.
        read = F.rms_norm(self.o_proj(merge_heads(attended)), width, eps=self.eps)
        x = F.rms_norm(self.latents + read, width, eps=self.eps)
        return F.rms_norm(x + self.mlp(x), width, eps=self.eps)  # (B, K, d)


@dataclass(frozen=True)
class Depth:
    """How deep the TRM thinks in one call: T = `n_cycles` per supervision step, N_sup = `n_supervision_steps`."""

    n_cycles: int
    n_supervision_steps: int

    def __post_init__(self) -> None:
        for name in ("n_cycles", "n_supervision_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")

    @classmethod
    def of_call(cls, config: SmolLMTRMConfig, n_cycles: int | None = None,
                n_supervision_steps: int | None = None) -> "Depth":
        """The depth of a call: the values passed to it, the config's where None."""
        return cls(config.n_cycles if n_cycles is None else n_cycles,
                   config.n_supervision_steps if n_supervision_steps is None else n_supervision_steps)

    @property
    def label(self) -> str:
        return f"T={self.n_cycles}, N_sup={self.n_supervision_steps}"

    def effective(self, config: SmolLMTRMConfig) -> int:
        """Network applications per thought, as the TRM paper counts depth: N_sup * T * (n + 1) * layers.
        An upper bound when N_sup > 1: a row whose halting head fires stops its supervision steps early."""
        per_cycle = (config.n_latent_steps + 1) * config.trm_num_layers
        return self.n_supervision_steps * self.n_cycles * per_cycle


# (thoughts (B, K, D), whether they end a supervision step) -> (the backbone's last-layer hidden states over them
# (B, K, D), their mask (B, K)); a supervision step's reading may be its scored answer pass, a cycle's never is
ReadThoughts = Callable[[torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor]]
# (a thought module's outputs (B, K, D)) -> the thoughts the backbone reads (B, K, D): `thought_output`
AsThoughts = Callable[[torch.Tensor], torch.Tensor]
# (the feedback pass's hidden states over the last step's thoughts (B, K, D), or None before the first) -> the
# backbone's next-token reading before each thought (B, K, D), in the space of the module's outputs
# (`thought_next_token_prior`)
NextTokenPrior = Callable[[torch.Tensor | None], torch.Tensor]
# (hidden states (N, D), the LM head's weight (V, D), targets (N,)) -> (each target's log-probability (N,), whether
# it is the top-1 prediction (N,) bool), without (N, V) logits: a fused kernel such as TRL's chunked log-prob, which
# `TRMSFTTrainer` hands to the model (remote code cannot import TRL)
FusedTokenScorer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class TRMCarry:
    y: torch.Tensor  # (B, K, d) the current answer
    z: torch.Tensor  # (B, K, d) the latent reasoning

    def detach(self) -> "TRMCarry":
        return TRMCarry(self.y.detach(), self.z.detach())

    def where(self, keep: torch.Tensor, other: "TRMCarry") -> "TRMCarry":
        """Rows where `keep` is True keep this carry, the others take `other`."""
        keep = keep[:, None, None]
        return TRMCarry(torch.where(keep, self.y, other.y), torch.where(keep, self.z, other.z))


@dataclass
class ThoughtStep:
    thoughts: torch.Tensor  # (B, K, D) in the backbone's embedding space, what it reads
    halt_logit: torch.Tensor | None  # (B,) float32; None for thoughts that cannot halt (pause)
    # (B, K, D) what reads as tokens (`thought_logits`: the step probe, `watch_thoughts`): the thought module's
    # outputs, which are the thoughts themselves unless `thought_output="token_mixture"` mixes embeddings by them
    readout: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.readout is None:
            self.readout = self.thoughts

    @classmethod
    def of_outputs(cls, outputs: torch.Tensor, halt_logit: torch.Tensor | None,
                   as_thoughts: AsThoughts | None) -> "ThoughtStep":
        thoughts = outputs if as_thoughts is None else as_thoughts(outputs)
        return cls(thoughts, halt_logit, outputs)


@dataclass
class ThoughtRecord:
    """One call of the thought module, as `SmolLMTRMForCausalLM.watch_thoughts` reports it."""

    rows: torch.Tensor  # (B,) bool: the rows that hold this `<think>` (the others' entries mean nothing)
    thoughts: torch.Tensor  # (B, K, D) the thoughts inserted
    readout: torch.Tensor  # (B, K, D) what `thought_logits` reads as tokens (see `ThoughtStep.readout`)
    halt_probability: torch.Tensor | None  # (B, S) each supervision step's, float32; None for pause thoughts
    steps_used: torch.Tensor  # (B,) supervision steps each row ran before it halted


@dataclass
class Thinking:
    """What a thought module gives for one `<think>`: every supervision step it ran, the last one's thoughts used."""

    steps: list[ThoughtStep]
    steps_used: torch.Tensor  # (B,) supervision steps each row ran before it halted

    @property
    def thoughts(self) -> torch.Tensor:
        return self.steps[-1].thoughts

    @property
    def readout(self) -> torch.Tensor:
        return self.steps[-1].readout


class HiddenStateTRM(nn.Module):
    """Compressor, recursion and the projection of y into K thought vectors in the backbone's embedding space."""

    reads_context = True  # the model hands it the context's hidden states

    def __init__(self, config: SmolLMTRMConfig):
        super().__init__()
        width = config.trm_hidden_size
        self.config = config  # n is read at every call: benchmarks sweep it on a built model
        self.compressor = LatentAttentionCompressor(config)
        self.net = TinyRecursiveNetwork(config)
        # Fixed starting points, as in the TRM reference code (buffers, not parameters; saved with the weights).
        self.register_buffer("y_init", torch.empty(width))
        self.register_buffer("z_init", torch.empty(width))
        self.out_proj = nn.Linear(width, config.text_config.hidden_size, bias=False)
        # Its weight puts the thoughts on the scale of the token embeddings (set by the model's init and `from_base`).
        self.out_norm = nn.RMSNorm(config.text_config.hidden_size, eps=config.trm_rms_norm_eps)
        self.halt_head = nn.Linear(width, 1)
        if config.thought_next_token_prior:  # its weight against the outputs (set on their scale, as out_norm's)
            self.prior_scale = nn.Parameter(torch.empty(1))  # not 0-dim: FSDP2 shards no scalar parameter

    def forward(self, context: torch.Tensor, context_mask: torch.Tensor, depth: Depth,
                halt_threshold: float | None = None, rows: torch.Tensor | None = None,
                read_thoughts: ReadThoughts | None = None, as_thoughts: AsThoughts | None = None,
                next_token_prior: NextTokenPrior | None = None) -> Thinking:
        """Deep supervision from the context's hidden states [B, L, D]: N_sup steps of T cycles from the initial
        carry, (y, z) detached between steps. Without `halt_threshold` (training) every step runs, and each one's
        thoughts are scored by the caller. With it (inference), a row whose halting probability exceeds it keeps its
        thoughts, and the steps end once every row of `rows` has halted. `read_thoughts` (`thought_feedback`) gives
        the backbone's hidden states over a step's thoughts (without gradient), which the compressor reads beside
        the context for the next step (and, with `feedback_every_cycle`, for the next cycle); `as_thoughts`
        (`thought_output`) maps each step's outputs to its thoughts; `next_token_prior` (`thought_next_token_prior`)
        gives what is added to each step's outputs."""
        x = self.compressor(context, context_mask)  # (B, K, d)
        prior = None if next_token_prior is None else next_token_prior(None)
        carry = self.initial_carry(x)
        halted = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        steps_used = torch.zeros(x.shape[0], device=x.device)
        steps = []

        def read_back(thoughts: torch.Tensor, ends_step: bool) -> None:
            """x (and the prior) after the backbone reads `thoughts`: the feedback."""
            nonlocal x, prior
            read, read_mask = read_thoughts(thoughts, ends_step)
            x = self.compressor(torch.cat([context, read.to(context.dtype)], dim=1),
                                torch.cat([context_mask, read_mask], dim=1))
            if next_token_prior is not None:  # a halted row keeps its thoughts: its prior too
                prior = torch.where(halted[:, None, None], prior, next_token_prior(read))

        def read_cycle(carry: TRMCarry) -> torch.Tensor:
            """`feedback_every_cycle`: the next cycle's x, from the backbone's reading of this cycle's thoughts."""
            with torch.no_grad():
                outputs = self.thoughts(carry.y, prior)
                thoughts = outputs if as_thoughts is None else as_thoughts(outputs)
            # a cycle's read has no gradient; the compressor runs in deep_recursion's grad mode (on for the last x)
            read_back(thoughts, ends_step=False)
            return x

        every_cycle = read_thoughts is not None and self.config.feedback_every_cycle
        for step in range(depth.n_supervision_steps):
            if step:
                carry = carry.detach()
                if read_thoughts is not None:
                    read_back(steps[-1].thoughts, ends_step=True)
            carry = carry.where(halted, self.deep_recursion(x, carry, depth.n_cycles,
                                                            read_cycle if every_cycle else None))
            steps_used += (~halted).float()
            halt_logit = self.halt_logit(carry.y)
            steps.append(ThoughtStep.of_outputs(self.thoughts(carry.y, prior), halt_logit, as_thoughts))
            if halt_threshold is not None:
                halted = halted | (torch.sigmoid(halt_logit) > halt_threshold)
                if bool(halted[rows].all()):
                    break
        return Thinking(steps, steps_used)

    @staticmethod
    def supervision_steps(depth: Depth) -> int:
        return depth.n_supervision_steps

    def initial_carry(self, x: torch.Tensor) -> TRMCarry:
        # Mixed-precision wrappers (FSDP2's policy) cast parameters but not buffers: follow x's dtype.
        return TRMCarry(self.y_init.to(x.dtype).expand_as(x), self.z_init.to(x.dtype).expand_as(x))

    def latent_recursion(self, x: torch.Tensor, carry: TRMCarry) -> TRMCarry:
        y, z = carry.y, carry.z
        for _ in range(self.config.n_latent_steps):
            z = self.net(x + y + z)
        y = self.net(y + z)
        return TRMCarry(y, z)

    def deep_recursion(self, x: torch.Tensor, carry: TRMCarry, T: int,
                       next_x: Callable[[TRMCarry], torch.Tensor] | None = None) -> TRMCarry:
        """T cycles from `carry`; `next_x` (`feedback_every_cycle`) gives each cycle after the first its x from
        the carry of the one before, the last cycle's with gradient (the compressor learns from it)."""
        # The first T-1 cycles only improve the starting point; backpropagating through all of them costs memory
        # for little gain, while the full gradient through the last cycle matters (the paper's ablation).
        for cycle in range(T - 1):
            with torch.no_grad():
                carry = self.latent_recursion(x, carry)
            if next_x is not None:
                with torch.set_grad_enabled(torch.is_grad_enabled() and cycle == T - 2):
                    x = next_x(carry)
        return self.latent_recursion(x, carry)

    def thoughts(self, y: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
        outputs = self.out_norm(self.out_proj(y))  # (B, K, D)
        if prior is None:
            return outputs
        return outputs + self.prior_scale * self.config.thought_prior_gain * prior.to(outputs.dtype)

    def halt_logit(self, y: torch.Tensor) -> torch.Tensor:
        # The head reads y without shaping it: the BCE's gradient is the same for every thought, and once answers are
        # mostly right (targets 1) it pushes all K of them onto one vector (seen: their mean cosine went from 0.73 to
        # 1.00 in 50 steps of the halting loss alone), which leaves the thoughts nothing to carry.
        return self.halt_head(y.detach().mean(dim=1)).squeeze(-1).float()  # (B,)


class PauseThoughts(nn.Module):
    """The control of experiments: K learned vectors, the same whatever the context and depth (no recursion, no
    halting), behind the same interface as `HiddenStateTRM`."""

    reads_context = False

    def __init__(self, config: SmolLMTRMConfig):
        super().__init__()
        self.vectors = nn.Parameter(torch.empty(config.num_latents, config.text_config.hidden_size))

    def forward(self, context: torch.Tensor | None, context_mask: torch.Tensor, depth: Depth,
                halt_threshold: float | None = None, rows: torch.Tensor | None = None,
                read_thoughts: ReadThoughts | None = None, as_thoughts: AsThoughts | None = None,
                next_token_prior: NextTokenPrior | None = None) -> Thinking:
        batch = context_mask.shape[0]
        steps_used = torch.ones(batch, device=context_mask.device)
        step = ThoughtStep.of_outputs(self.vectors[None], None, as_thoughts)  # mixed once, the same for every row
        rows = (batch, -1, -1)
        return Thinking([ThoughtStep(step.thoughts.expand(rows), None, step.readout.expand(rows))], steps_used)

    @staticmethod
    def supervision_steps(depth: Depth) -> int:
        return 1


class StraightThrough(torch.autograd.Function):
    """`forward` value, `backward` path: the value exactly (no `soft + (value - soft).detach()` rounding), the
    gradient passed to `path` unchanged."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, path: torch.Tensor) -> torch.Tensor:
        return value.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, grad


THOUGHT_MODULES = {"trm": HiddenStateTRM, "pause": PauseThoughts}  # thought_mode "none" has no module


# ----------------------------------------------------------------------------------------------------------------
# Cache: the KV cache plus what the thoughts need to survive generate() and beam search
# ----------------------------------------------------------------------------------------------------------------


class ThoughtCache(DynamicCache):
    """A `DynamicCache` that also records, per row and column of the backbone's stream, the column's kind (`PAD`,
    `TOKEN`, `THOUGHT`) and its last-layer hidden state (the compressor's input at a later `<think>`).

    Positions and thought counts derive from the kinds, so beam search's reordering keeps everything consistent; they
    are also kept as running counts per row, with the mask of real columns, so that a decoding step costs no pass
    over the whole history. Hidden states are kept as the chunks that produced them and joined only when a `<think>`
    needs them, so that a decoding step does not copy the whole history. With `replay=True` (activation
    checkpointing, where layers drop the KV cache) it keeps the inputs instead and the backbone recomputes the whole
    stream at each segment.
    """

    COLUMN_RECORDS = ("kinds", "real", "replay_embeds", "replay_drops")  # (B, C, ...) beside the hidden states
    ROW_RECORDS = COLUMN_RECORDS + ("real_count", "thought_count")  # everything kept per row

    def __init__(self, *args, replay: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.kinds: torch.Tensor | None = None  # (B, C) long
        self.real: torch.Tensor | None = None  # (B, C) bool: kinds != PAD, the keys a query may see
        self.real_count: torch.Tensor | None = None  # (B,) real columns so far: the next column's position id
        self.thought_count: torch.Tensor | None = None  # (B,) thought columns so far
        self.hidden_chunks: list[torch.Tensor] = []  # (B, c, D) each, along C
        self.replay = replay
        self.replay_embeds: torch.Tensor | None = None  # (B, C, D), replay only
        self.replay_drops: torch.Tensor | None = None  # (B, C), replay only: tokens hidden from each query column

    @property
    def num_columns(self) -> int:
        return 0 if self.kinds is None else self.kinds.shape[1]

    @property
    def hidden(self) -> torch.Tensor:
        """(B, C, D) the last-layer hidden states of every column so far."""
        if len(self.hidden_chunks) > 1:
            self.hidden_chunks = [torch.cat(self.hidden_chunks, dim=1)]
        return self.hidden_chunks[0]

    def positions(self, kinds: torch.Tensor) -> torch.Tensor:
        """(B, c) position ids of new columns of these kinds: real columns count on from the cached ones, padding
        takes any valid value (as `stream_positions` of the whole stream gives them)."""
        new = (kinds != PAD).long().cumsum(dim=1) - 1
        return (new if self.real_count is None else new + self.real_count[:, None]).clamp(min=0)

    def kinds_with(self, kinds: torch.Tensor) -> torch.Tensor:
        """(B, C + c) the kinds of the stream with new columns of these kinds."""
        return kinds if self.kinds is None else torch.cat([self.kinds, kinds], dim=1)

    def real_with(self, kinds: torch.Tensor) -> torch.Tensor:
        """(B, C + c) the real columns of the stream with new columns of these kinds: a query's visible keys."""
        return kinds != PAD if self.real is None else torch.cat([self.real, kinds != PAD], dim=1)

    def record(self, kinds: torch.Tensor, hidden: torch.Tensor | None, embeds: torch.Tensor,
               drops: torch.Tensor | None, real: torch.Tensor | None = None):
        """Append new columns: their kinds, last-layer hidden states (None: not needed), inputs and drops (replay
        only); `real` is `real_with(kinds)` when the caller has it already."""

        def grow(old, new):
            return new if old is None else torch.cat([old, new], dim=1)

        def count(old, new):
            return new if old is None else old + new

        self.real = self.real_with(kinds) if real is None else real
        self.real_count = count(self.real_count, self.real[:, -kinds.shape[1] :].sum(dim=1))
        self.kinds = self.kinds_with(kinds)
        self.thought_count = count(self.thought_count, (kinds == THOUGHT).sum(dim=1))
        if hidden is not None:
            self.hidden_chunks.append(hidden)
        if self.replay:
            self.replay_embeds = grow(self.replay_embeds, embeds)
            self.replay_drops = grow(self.replay_drops, drops)

    def _map(self, fn, names: tuple[str, ...]) -> None:
        self.hidden_chunks = [fn(chunk) for chunk in self.hidden_chunks]
        for name in names:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, fn(value))

    def _map_rows(self, fn) -> None:
        self._map(fn, self.ROW_RECORDS)

    def reorder_cache(self, beam_idx: torch.LongTensor):
        super().reorder_cache(beam_idx)
        self._map_rows(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: torch.Tensor):
        super().batch_select_indices(indices)
        self._map_rows(lambda t: t[indices.to(t.device)])

    def batch_repeat_interleave(self, repeats: int):
        super().batch_repeat_interleave(repeats)
        self._map_rows(lambda t: t.repeat_interleave(repeats, dim=0))

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"ThoughtCache.crop takes a negative count of columns to remove, got {tokens_to_remove}.")
        if not self.replay:
            super().crop(tokens_to_remove)
        if tokens_to_remove:
            if self.hidden_chunks:
                self.hidden_chunks = [self.hidden]
            removed = self.kinds[:, tokens_to_remove:]
            self.real_count = self.real_count - (removed != PAD).sum(dim=1)
            self.thought_count = self.thought_count - (removed == THOUGHT).sum(dim=1)
            self._map(lambda t: t[:, :tokens_to_remove], self.COLUMN_RECORDS)

    @contextlib.contextmanager
    def scratch(self):
        """While inside, columns may be added to try something (an answer pass, a feedback read); on leaving, the
        cache holds exactly the tensors it held before. Unlike `crop`, nothing of what ran inside stays: no slice of
        a longer tensor keeps it in memory, and the earlier columns keep their autograd history even when the
        columns were added under `torch.no_grad()`."""
        layers = list(self.layers)
        layer_states = [dict(vars(layer)) for layer in layers]
        records = {name: getattr(self, name) for name in self.ROW_RECORDS}
        chunks = list(self.hidden_chunks)
        try:
            yield self
        finally:
            self.layers[:] = layers
            for layer, state in zip(layers, layer_states):
                vars(layer).clear()
                vars(layer).update(state)
            for name, value in records.items():
                setattr(self, name, value)
            self.hidden_chunks = chunks

    def reset(self):
        super().reset()
        self.kinds = self.real = self.real_count = self.thought_count = None
        self.replay_embeds = self.replay_drops = None
        self.hidden_chunks = []

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.num_columns if self.replay else super().get_seq_length(layer_idx)


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class SupervisedStep:
    """One supervision step of one `<think>`, for the head to score (training)."""

    think: int  # which `<think>` of the chunk
    halt_logit: torch.Tensor | None  # (B,); None: thoughts that cannot halt
    # (B, L, D) hidden states behind each input column's logits given this step's thoughts, meaningful in the columns
    # of this `<think>`'s answer; None for the last step, whose answer is the main pass's, and for earlier steps whose
    # answers are not scored (`score_step_answers=False`)
    hidden: torch.Tensor | None
    readout: torch.Tensor  # (B, K, D) what this step's thoughts decode from, for the step probe
    thoughts: torch.Tensor | None = None  # (B, K, D) an earlier step's thoughts, which its answer pass reads
    last: bool = False  # the last supervision step: its thoughts are the ones the answer reads


@dataclass
class ThoughtSupervision:
    """What the head needs, besides the main pass, to score the thoughts of a chunk."""

    answer_index: torch.Tensor  # (B, L) which `<think>`'s answer each input column predicts (-1: none)
    think_rows: torch.Tensor  # (S, B) bool: row has a j-th `<think>` in this chunk
    steps: list[SupervisedStep]
    steps_per_think: int  # supervision steps each `<think>` is scored over (the step probe)
    answers_per_think: int  # of them, the steps whose answers are scored (`score_step_answers`: all, or the last)
    # (S', B) bool: the answer of the row's j-th `<think>` read forced thoughts (`forced_thoughts`); None: none forced
    forced_rows: torch.Tensor | None = None
    # (B, S', K, D) the backbone's last-layer states before each thought of the j-th `<think>` (the `<think>` token's,
    # then thoughts 0 .. K-2), which predict the thoughts' tokens for `forced_lm_loss_weight` (the forced ones, or with
    # `forced_lm_scope="all"` every labelled one); None: that loss is off
    step_lm_states: torch.Tensor | None = None


@dataclass
class SmolLMTRMModelOutput(ModelOutput):
    """`last_hidden_state` [B, L, D] is aligned with `input_ids` (thought positions are not returned): the column of
    `<think>` holds the last thought's state, the one that predicts the first token after the thoughts."""

    last_hidden_state: torch.Tensor | None = None
    cache: ThoughtCache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None  # (B, L, D) per layer, embeddings first, input-aligned
    halt_probability: torch.Tensor | None = None
    supervision_steps: torch.Tensor | None = None
    thought_norm: torch.Tensor | None = None
    supervision: ThoughtSupervision | None = None  # only with `supervise=True`


@dataclass
class SmolLMTRMOutput(ModelOutput):
    """`logits` [B, L, V] are aligned with `input_ids` (thought positions are not returned): `logits[:, i]` predicts
    `input_ids[:, i + 1]`, so the column of `<think>` predicts the first token after its thoughts."""

    loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    halt_loss: torch.Tensor | None = None
    probe_loss: torch.Tensor | None = None  # only with `thought_labels`
    probe_accuracy: torch.Tensor | None = None  # share of labelled thoughts that decode their token
    forced_lm_loss: torch.Tensor | None = None  # only with `forced_lm_loss_weight` > 0 and its targets
    logits: torch.Tensor | None = None  # None when training with labels, unless `return_logits=True`
    # (B, L) bool, with labels: the column's top-1 prediction is its next label (False where nothing is scored)
    token_correct: torch.Tensor | None = None
    cache: ThoughtCache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    halt_probability: torch.Tensor | None = None
    supervision_steps: torch.Tensor | None = None
    thought_norm: torch.Tensor | None = None


@dataclass
class ChunkLayout:
    """Where each column of a chunk of new tokens goes in the block layout (see the module docstring): block j's
    tokens, then, for every block but the last, the K thoughts of the `<think>` that ends it."""

    ids: torch.Tensor  # (B, C) token ids in the layout (pad columns hold 0)
    kinds: torch.Tensor  # (B, C) PAD / TOKEN / THOUGHT
    out_columns: torch.Tensor  # (B, L) layout column whose hidden state gives each input column's logits
    block_starts: list[int]  # first column of block j's tokens
    block_widths: list[int]  # width of block j's tokens
    num_latents: int
    think_rows: torch.Tensor  # (S, B) bool: row has a j-th `<think>` in this chunk
    answer_index: torch.Tensor  # (B, L) which `<think>`'s answer each input column predicts (-1: none)

    @property
    def num_thinks(self) -> int:
        return len(self.block_widths) - 1

    def tokens(self, j: int) -> slice:
        """Columns of block j's tokens (block j + 1 is the answer of the j-th `<think>`)."""
        return slice(self.block_starts[j], self.block_starts[j] + self.block_widths[j])

    def thoughts(self, j: int) -> slice:
        """Columns of the j-th `<think>`'s K thoughts, right after block j's tokens."""
        start = self.tokens(j).stop
        return slice(start, start + self.num_latents)


class SmolLMTRMPreTrainedModel(PreTrainedModel):
    config_class = SmolLMTRMConfig
    config: SmolLMTRMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    # flex attention would need the block masks below rebuilt as BlockMasks; not done yet.
    _supports_flex_attn = False
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.text_config.initializer_range
        if isinstance(module, LatentAttentionCompressor):
            init.trunc_normal_(module.latents, std=1.0)
        elif isinstance(module, HiddenStateTRM):
            init.trunc_normal_(module.y_init, std=1.0)
            init.trunc_normal_(module.z_init, std=1.0)
            init.zeros_(module.halt_head.weight)
            init.constant_(module.halt_head.bias, HALT_BIAS_INIT)
            # Random token embeddings are drawn with std `initializer_range`, so that is their RMS too.
            init.constant_(module.out_norm.weight, std)
            if hasattr(module, "prior_scale"):
                init.constant_(module.prior_scale, std)
        elif isinstance(module, PauseThoughts):
            init.normal_(module.vectors, std=std)


class SmolLMTRMModel(SmolLMTRMPreTrainedModel):
    """The backbone's body with the thoughts: it cuts a chunk at each `<think>`, runs the backbone block by block on
    the `ThoughtCache`, and inserts the thought module's K vectors after every `<think>`. Returns the last hidden
    states aligned with `input_ids`, and the cache."""

    # Training: the earlier supervision steps' answer passes join the main pass on the batch axis (False: one pass
    # each, the reference the stacked path is tested against).
    stack_supervision_steps = True

    def __init__(self, config: SmolLMTRMConfig, language_model: PreTrainedModel | None = None):
        """`language_model`: a loaded backbone body used as it is (`from_base`); without it, one is built from
        `config.text_config`."""
        super().__init__(config)
        self.language_model = AutoModel.from_config(config.text_config) if language_model is None else language_model
        thought_module = THOUGHT_MODULES.get(config.thought_mode)
        self.thoughts = thought_module(config) if thought_module is not None else None
        self._no_split_modules = list(self.language_model._no_split_modules or []) + ["TransformerBlock"]
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: ThoughtCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        n_cycles: int | None = None,
        n_supervision_steps: int | None = None,
        supervise: bool = False,
        insert_thoughts: bool = True,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        forced_thoughts: torch.LongTensor | None = None,
        **kwargs,
    ) -> SmolLMTRMModelOutput:
        """`position_ids` are derived from `attention_mask` and the thoughts; ones passed in are checked for packing
        (unsupported) and otherwise ignored. `n_cycles` / `n_supervision_steps` override the config for this call.
        `supervise=True` (training) runs every supervision step and returns what the head needs to score each;
        otherwise a row stops its steps once it halts. `insert_thoughts=False` reads `<think>` as an ordinary token
        (the written-reasoning teacher of self-distillation, an ablation). `output_hidden_states=True` also returns
        every layer's states, aligned with `input_ids` like `last_hidden_state`. `forced_thoughts` [B, S, K] (-100:
        not forced): thought i of the chunk's j-th `<think>` is the embedding of token `forced_thoughts[:, j, i]`
        instead of the thought module's output, which still runs (teacher forcing of the thoughts in training)."""
        reject_unknown_arguments(kwargs, "SmolLMTRMModel.forward")
        if output_attentions:
            raise NotImplementedError("SmolLMTRM does not return attentions.")
        if input_ids is None or inputs_embeds is not None:
            raise ValueError("SmolLMTRM needs `input_ids` (to find `<think>`), not `inputs_embeds`.")
        reject_packed_positions(position_ids, attention_mask)
        depth = Depth.of_call(self.config, n_cycles, n_supervision_steps)
        use_cache = self.config.text_config.use_cache if use_cache is None else use_cache
        cache = self._stream_cache(cache)
        layout = self._plan_chunk(input_ids, valid_columns(input_ids, attention_mask), insert_thoughts)
        self._check_length(cache, layout)
        if forced_thoughts is not None:
            self._check_forced_thoughts(forced_thoughts, layout)
        layers = [] if output_hidden_states else None
        hidden, stats, steps, step_lm_states = self._run_chunk(cache, layout, depth, supervise, layers, forced_thoughts)
        supervision = None
        if supervise:
            per_think = self.thoughts.supervision_steps(depth) if self.thoughts is not None else 1
            answers = per_think if self.config.score_step_answers else 1
            forced_rows = None if forced_thoughts is None else (forced_thoughts != IGNORE_INDEX).any(dim=-1).T
            supervision = ThoughtSupervision(layout.answer_index, layout.think_rows, steps, per_think, answers,
                                             forced_rows, step_lm_states)
        hidden_states = None
        if layers is not None:  # per block, a tuple over layers: join each layer's blocks, then align
            hidden_states = tuple(self._input_aligned(torch.cat(layer, dim=1), layout.out_columns)
                                  for layer in zip(*layers))
        return SmolLMTRMModelOutput(last_hidden_state=hidden, cache=cache if use_cache else None,
                                    hidden_states=hidden_states, supervision=supervision, **stats)

    def _stream_cache(self, cache) -> ThoughtCache:
        # In this order: `is_activation_checkpointing` walks every module, which would cost each decoding step more
        # than the rest of the wrapper's bookkeeping does.
        replay = self.training and torch.is_grad_enabled() and self.language_model.is_activation_checkpointing
        if cache is None:
            return ThoughtCache(config=self.config.get_text_config(decoder=True), replay=replay)
        if not isinstance(cache, ThoughtCache):
            raise TypeError(
                f"SmolLMTRM needs a ThoughtCache (it records where the thoughts are), got {type(cache).__name__}; "
                "let generate() create it, or pass `ThoughtCache(config=model.config.text_config)`."
            )
        if replay and cache.num_columns:
            raise ValueError("Continuing a cache with activation checkpointing on is not supported; call `.eval()`.")
        return cache

    # ------------------------------------------------------------------------------------------------------------
    # Layout
    # ------------------------------------------------------------------------------------------------------------

    def _plan_chunk(self, input_ids: torch.Tensor, valid: torch.Tensor, insert_thoughts: bool = True) -> ChunkLayout:
        """Cut each row after every `<think>` and place the segments in blocks of a common width."""
        batch, length = input_ids.shape
        K = self.config.num_latents
        if self.config.thought_mode == "none" or not insert_thoughts:
            is_think = torch.zeros_like(valid)
        else:
            is_think = (input_ids == self.config.think_token_id) & valid
        thinks_through = is_think.long().cumsum(dim=1)  # (B, L) thinks up to and including each column
        answer_index = thinks_through - 1
        num_blocks = int(thinks_through[:, -1].max()) + 1 if length else 1
        if num_blocks == 1:  # no `<think>`: the chunk is one block as it stands (most decoding steps)
            columns = torch.arange(length, device=input_ids.device).expand(batch, -1)
            return ChunkLayout(input_ids, torch.where(valid, TOKEN, PAD), columns, [0], [length], K,
                               is_think.new_zeros(0, batch), answer_index)
        segment = thinks_through - is_think.long()  # (B, L) segment index: a `<think>` ends its segment
        seg_len = torch.zeros(batch, num_blocks, dtype=torch.long, device=input_ids.device)
        seg_len.scatter_add_(1, segment, torch.ones_like(segment))  # (B, S+1)
        widths = seg_len.max(dim=0).values.tolist()
        starts = [sum(widths[:j]) + j * K for j in range(num_blocks)]
        starts_t = torch.tensor(starts, device=input_ids.device)
        widths_t = torch.tensor(widths, device=input_ids.device)
        # Real tokens first, in order, then the segment's padding (also the input's own left padding): a padding
        # column always has a real column before it to attend to. A query with no visible key has a logsumexp of
        # -inf, and fused attention kernels (cuDNN's sdpa backward in torch 2.11 on H200, seen here) then return NaN
        # gradients.
        layout_col = starts_t[segment] + real_tokens_first(valid, segment, num_blocks)
        ids = input_ids.new_zeros(batch, starts[-1] + widths[-1])
        kinds = torch.full_like(ids, PAD)
        ids.scatter_(1, layout_col, input_ids)
        kinds.scatter_(1, layout_col, torch.where(valid, TOKEN, PAD))
        think_rows = torch.stack([thinks_through[:, -1] > j for j in range(num_blocks - 1)])
        last_thought_col = starts_t[segment] + widths_t[segment] + K - 1
        out_columns = torch.where(is_think, last_thought_col, layout_col)
        layout = ChunkLayout(ids, kinds, out_columns, starts, widths, K, think_rows, answer_index)
        for j in range(layout.num_thinks):
            kinds[:, layout.thoughts(j)] = torch.where(think_rows[j], THOUGHT, PAD)[:, None]
        return layout

    def _check_forced_thoughts(self, forced: torch.Tensor, layout: ChunkLayout) -> None:
        K = self.config.num_latents
        if self.config.thought_mode == "none" or forced.dim() != 3 or forced.shape[::2] != (layout.ids.shape[0], K):
            raise ValueError(f"forced_thoughts must be [batch, <think>s, num_latents={K}] token ids for a model with "
                             f"thoughts, got {list(forced.shape)} (thought_mode={self.config.thought_mode!r}).")
        if forced.shape[1] > layout.num_thinks and (forced[:, layout.num_thinks :] != IGNORE_INDEX).any():
            raise ValueError(f"forced_thoughts force <think> {layout.num_thinks} or later; the chunk holds "
                             f"{layout.num_thinks}.")

    def _check_length(self, cache: ThoughtCache, layout: ChunkLayout) -> None:
        """Refuse positions beyond what the backbone was built for: they would be silently wrong, not an error."""
        seen = 0 if cache.real_count is None else cache.real_count
        longest = int(((layout.kinds != PAD).sum(dim=1) + seen).max())
        limit = getattr(self.config.text_config, "max_position_embeddings", None)
        if limit is not None and longest > limit:
            raise ValueError(
                f"A row needs {longest} positions (tokens plus {self.config.num_latents} per `<think>`), more than the "
                f"backbone's max_position_embeddings={limit}; shorten it or use fewer `<think>` / num_latents."
            )

    # ------------------------------------------------------------------------------------------------------------
    # Running the backbone
    # ------------------------------------------------------------------------------------------------------------

    def _run_chunk(self, cache: ThoughtCache, layout: ChunkLayout, depth: Depth, supervise: bool,
                   layers: list | None = None, forced: torch.Tensor | None = None):
        """Run the blocks of a chunk in order: tokens, then the thoughts they end with. Returns the hidden states
        behind each input column's logits, TRM statistics and (supervised) every supervision step; `layers`, when
        given, receives every block's per-layer states.

        With `thought_window="append"` a `<think>`'s thoughts run in one backbone pass with the tokens after them,
        thoughts first (causal attention keeps them from those tokens: exact), so S `<think>` cost 1 + S passes;
        `"slide"` hides different tokens from the thoughts and from what follows them, so those run apart. In
        training, the answers to the earlier supervision steps' thoughts are the same columns after other thoughts:
        they join that pass, stacked on the batch axis (`stack_supervision_steps`), so N_sup adds no pass. With
        `forced_lm_loss_weight` in training, also returns the states before each thought of the `<think>` it scores
        (`ThoughtSupervision.step_lm_states`): those `forced` covers, or every one with `forced_lm_scope="all"`.
        """
        K = self.config.num_latents
        prior_thinks = self._thinks_so_far(cache, layout.kinds.shape[0])
        stack = self._stacks_supervision_steps(cache, supervise, layers)
        hidden_blocks, stats, steps = [], [], []
        pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # thoughts (embeds, kinds) to run with the next tokens
        earlier: list[SupervisedStep] = []  # supervision steps whose answers the next pass scores
        for j in range(layout.num_thinks + 1):
            tokens = layout.tokens(j)
            columns = pending
            if tokens.stop > tokens.start:
                columns = columns + [(self.get_input_embeddings()(layout.ids[:, tokens]), layout.kinds[:, tokens])]
            if columns:
                embeds, kinds = self._joined(columns)
                drop = (prior_thinks + j) * K
                if earlier:  # the columns after the last `<think>`'s thoughts, read after each earlier step's
                    variants = [self._joined([(step.thoughts, columns[0][1]), *columns[1:]])[0] for step in earlier]
                    hidden, *answers = self._extend_stacked(cache, [embeds, *variants], kinds, drop)
                    answer_columns = (layout.out_columns - layout.thoughts(j - 1).start).clamp(0, hidden.shape[1] - 1)
                    for step, answer in zip(earlier, answers):
                        step.hidden = self._input_aligned(answer, answer_columns)
                    earlier = []
                else:
                    hidden = self._extend(cache, embeds, kinds, drop, layers)
                hidden_blocks.append(hidden)
            if j == layout.num_thinks:
                break
            thoughts, think_stats, think_steps = self._think(cache, layout, j, depth, supervise, prior_thinks, stack)
            if forced is not None and j < forced.shape[1]:
                thoughts = self._forced(thoughts, forced[:, j])
            stats.append(think_stats)
            steps += think_steps
            if stack:
                earlier = think_steps[:-1]
            pending = [(thoughts, layout.kinds[:, layout.thoughts(j)])]
            if self.config.thought_window == "slide":
                hidden_blocks.append(self._extend(cache, *pending[0], torch.zeros_like(prior_thinks), layers))
                pending = []
        hidden = torch.cat(hidden_blocks, dim=1)  # (B, C, D) the chunk in layout order
        scored_thinks = layout.num_thinks if self.config.forced_lm_scope == "all" else (
            None if forced is None else forced.shape[1])
        step_lm_states = self._states_before_thoughts(hidden, layout, scored_thinks) if (
            supervise and scored_thinks is not None and self.config.forced_lm_loss_weight > 0) else None
        return self._input_aligned(hidden, layout.out_columns), self._mean_stats(stats), steps, step_lm_states

    @staticmethod
    def _states_before_thoughts(hidden: torch.Tensor, layout: ChunkLayout, num_thinks: int) -> torch.Tensor:
        """(B, S', K, D) for each of the first S' `<think>` (up to `num_thinks`), the states of the columns before
        its K thoughts, in layout order `hidden` (B, C, D): the `<think>` token's (the last real column of its block),
        then thoughts 0 .. K-2. Each predicts the token written at the next one."""
        K, batch = layout.num_latents, hidden.shape[0]
        states = []
        for j in range(min(layout.num_thinks, num_thinks)):
            tokens = layout.tokens(j)
            # (B,) a row without a j-th `<think>` (all padding here) points at the block's first column
            think_column = tokens.start + ((layout.kinds[:, tokens] != PAD).sum(dim=1) - 1).clamp(min=0)
            thought_columns = torch.arange(layout.thoughts(j).start, layout.thoughts(j).stop - 1, device=hidden.device)
            columns = torch.cat([think_column[:, None], thought_columns.expand(batch, -1)], dim=1)  # (B, K)
            states.append(hidden.gather(1, columns[..., None].expand(-1, -1, hidden.shape[-1])))
        return torch.stack(states, dim=1) if states else hidden.new_zeros(batch, 0, K, hidden.shape[-1])

    def _stacks_supervision_steps(self, cache: ThoughtCache, supervise: bool, layers: list | None) -> bool:
        """Whether the earlier supervision steps' answers join the next pass (see `_run_chunk`): not with feedback
        (each step reads the last one's pass), `"slide"` (thoughts and answers run apart), replay or per-layer
        states, which keep one pass per step."""
        return (self.stack_supervision_steps and supervise and not cache.replay and layers is None
                and not self.config.thought_feedback and self.config.thought_window != "slide"
                and self.config.score_step_answers)

    def _extend_stacked(self, cache: ThoughtCache, variants: list[torch.Tensor], kinds: torch.Tensor,
                        drop: torch.Tensor) -> list[torch.Tensor]:
        """`_extend` of the same new columns with several variants of their embeddings (B, c, D) each, in one pass
        with the rows repeated on the batch axis; the cache keeps the first variant's. Returns each one's hidden
        states (B, c, D)."""
        batch, count = kinds.shape[0], len(variants)
        cache.batch_repeat_interleave(count)  # row b's copies are rows b * count ... b * count + count - 1
        hidden = self._extend(cache, torch.stack(variants, dim=1).flatten(0, 1), kinds.repeat_interleave(count, 0),
                              drop.repeat_interleave(count, 0))
        cache.batch_select_indices(torch.arange(batch, device=kinds.device) * count)
        return list(hidden.unflatten(0, (batch, count)).unbind(1))

    @staticmethod
    def _joined(columns: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Consecutive column groups (embeds (B, c, D), kinds (B, c)) as one; thoughts take the tokens' dtype (under
        autocast the TRM's output is in the autocast dtype, the embedding table's rows are not)."""
        dtype = columns[-1][0].dtype
        return torch.cat([embeds.to(dtype) for embeds, _ in columns], 1), torch.cat([kinds for _, kinds in columns], 1)

    @staticmethod
    def _input_aligned(hidden: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """(B, L, D): for each input column, the hidden state of its layout column `columns` (B, L)."""
        return hidden.gather(1, columns[..., None].expand(-1, -1, hidden.shape[-1]))

    def _thinks_so_far(self, cache: ThoughtCache, batch: int) -> torch.Tensor:
        if cache.thought_count is None:
            return torch.zeros(batch, dtype=torch.long, device=self.device)
        return cache.thought_count // self.config.num_latents

    def _extend(self, cache: ThoughtCache, embeds: torch.Tensor, kinds: torch.Tensor, drop: torch.Tensor,
                layers: list | None = None):
        """Run the backbone on new columns after everything in `cache`; `drop` (B,) is how many of each row's oldest
        tokens these columns may not see (`thought_window="slide"`). Returns their last-layer hidden states, and
        appends every layer's to `layers` when given."""
        slide = self.config.thought_window == "slide"
        drops = real = None
        if cache.replay:
            drops = (drop if slide else torch.zeros_like(drop))[:, None].expand_as(kinds)
            out = self._replay_backbone(cache, embeds, cache.kinds_with(kinds), drops, layers is not None)
        else:
            # (B, C): every query of this call shares the row's drop; without one, the running mask of real columns
            real = cache.real_with(kinds)
            mask = visible_keys(cache.kinds_with(kinds), drop[:, None]) if slide else real
            out = self.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=cache.positions(kinds),
                                      cache=cache, use_cache=True, output_hidden_states=layers is not None)
        hidden = out.last_hidden_state[:, -embeds.shape[1] :]
        if layers is not None:
            layers.append(tuple(state[:, -embeds.shape[1] :] for state in out.hidden_states))
        reads_context = self.thoughts is not None and self.thoughts.reads_context
        cache.record(kinds, hidden if reads_context else None, embeds, drops, real)
        return hidden

    def _replay_backbone(self, cache: ThoughtCache, embeds, all_kinds, drops, output_hidden_states: bool):
        """Activation checkpointing drops the KV cache inside layers: recompute the whole stream instead, with a
        per-query mask so that earlier columns see exactly what they saw when they were first computed. Returns the
        backbone's output over the whole stream (the new columns are its last)."""
        all_embeds = embeds if cache.replay_embeds is None else torch.cat([cache.replay_embeds, embeds], dim=1)
        all_drops = drops if cache.replay_drops is None else torch.cat([cache.replay_drops, drops], dim=1)
        positions = stream_positions(all_kinds)
        mask = all_kinds != PAD
        if self.config.thought_window == "slide":
            ranks = token_ranks(all_kinds)

            def slide(batch_idx, head_idx, q_idx, kv_idx):
                return ranks[batch_idx, kv_idx] > all_drops[batch_idx, q_idx]

            mask = create_causal_mask(config=self.language_model.config, inputs_embeds=all_embeds,
                                      attention_mask=mask, cache=None, position_ids=positions,
                                      and_mask_function=slide)
        return self.language_model(inputs_embeds=all_embeds, attention_mask=mask, position_ids=positions,
                                   use_cache=False, output_hidden_states=output_hidden_states)

    # ------------------------------------------------------------------------------------------------------------
    # Thoughts
    # ------------------------------------------------------------------------------------------------------------

    def _think(self, cache, layout: ChunkLayout, j: int, depth: Depth, supervise: bool, prior_thinks,
               stacked: bool = False):
        """The K thought vectors for the j-th `<think>` of the chunk (B, K, D), their statistics, and (supervised)
        its supervision steps, each earlier step's answer run on that step's thoughts; `stacked`: those answers are
        left to the next pass (`_run_chunk`), which fills in their `hidden`."""
        context = cache.hidden if self.thoughts.reads_context else None
        # Training runs every step; so does inference at threshold 1 (never halting), without a check per step.
        halts = not supervise and self.config.halt_threshold < 1.0
        threshold = self.config.halt_threshold if halts else None
        kinds = layout.kinds[:, layout.thoughts(j)]
        answers = []  # supervised, with feedback: each earlier step's answer pass, which also gave its read

        scores_answers = supervise and self.config.score_step_answers

        def read_thoughts(thoughts, ends_step):
            # What the feedback passes on carries no gradient: the next step learns to read it, while the
            # backbone's processing of the thoughts trains through the answers they are scored on.
            if not (scores_answers and ends_step):
                with torch.no_grad():
                    return self._read_thoughts(cache, kinds, thoughts), kinds != PAD
            answer, thought_states = self._answer_pass(cache, layout, j, thoughts, prior_thinks)
            answers.append(answer)
            return thought_states.detach(), kinds != PAD

        read = read_thoughts if self.config.thought_feedback else None
        as_thoughts = self._token_mixture if self.config.thought_output == "token_mixture" else None
        prior = self._next_token_prior(cache) if self.config.thought_next_token_prior else None
        thinking = self.thoughts(context, cache.kinds != PAD, depth, threshold, layout.think_rows[j], read,
                                 as_thoughts, prior)
        steps = []
        if supervise:
            for index, step in enumerate(thinking.steps[:-1]):
                if stacked or not scores_answers:
                    hidden = None  # until the next pass, or never
                elif answers:
                    hidden = answers[index]
                else:
                    hidden = self._answer_pass(cache, layout, j, step.thoughts, prior_thinks)[0]
                steps.append(SupervisedStep(j, step.halt_logit, hidden, step.readout, step.thoughts))
            steps.append(SupervisedStep(j, thinking.steps[-1].halt_logit, None, thinking.readout, last=True))
        return thinking.thoughts, self._thought_stats(thinking), steps

    def _next_token_prior(self, cache: ThoughtCache) -> NextTokenPrior:
        """`thought_next_token_prior`: for the thoughts of the `<think>` that ends the cache, the backbone's
        last-layer state before each thought, as the direction of the pre-norm state it came from. Read through the
        final norm (as thoughts are), that direction gives exactly the backbone's next-token logits there, so with a
        large weight a thought becomes the token the backbone would write next. Before the first feedback pass only
        the first thought has one (the `<think>` token's state); the others get zeros. No gradient flows into it, as
        none flows into the feedback."""
        real = cache.real
        last = (real * torch.arange(real.shape[1], device=real.device)).argmax(dim=1)  # the `<think>` column
        think_state = cache.hidden[torch.arange(real.shape[0], device=real.device), last].detach()  # (B, D)
        norm_weight = self.language_model.norm.weight.detach()
        dead = norm_weight == 0  # a zero weight erases its coordinate whatever it holds: keep it at 0

        def before_each_thought(read: torch.Tensor | None) -> torch.Tensor:
            if read is None:
                after_first = think_state.new_zeros(think_state.shape[0], self.config.num_latents - 1,
                                                    think_state.shape[-1])
            else:
                after_first = read[:, :-1].to(think_state.dtype)
            states = torch.cat([think_state[:, None], after_first], dim=1)  # (B, K, D), final-normed
            # RMSNorm(v) = w * v / rms(v): dividing by w gives v / rms(v), whose norm is the state again.
            return torch.where(dead, 0.0, states / torch.where(dead, 1.0, norm_weight).to(states.dtype))

        return before_each_thought

    def _forced(self, thoughts: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The thoughts (B, K, D) with each forced one (`tokens` (B, K) not -100) replaced by its token's embedding:
        what the backbone reads there is then the written step, and it learns to read the thought positions as
        such while the thought module learns (through the step probe) to write them. Only the thoughts of the last
        supervision step, the ones the answer reads, are forced: the earlier steps' answers (deep supervision) and
        feedback still read the module's own, and the halting head gets no target from a forced answer."""
        embeds = self.get_input_embeddings()(tokens.clamp(min=0))  # in the embeddings' dtype: the exact tokens
        return torch.where((tokens != IGNORE_INDEX)[..., None], embeds, thoughts.to(embeds.dtype))

    def _token_mixture(self, outputs: torch.Tensor) -> torch.Tensor:
        """`thought_output="token_mixture"`: each output (B, K, D) read as tokens through the final norm and the
        (tied) LM head, and the thought the softmax mixture of the token embeddings by those weights; with
        `snap_thoughts`, the embedding of the heaviest token instead (in training with the mixture's gradient)."""
        if is_deepspeed_zero3_enabled():  # outside their modules' forward, ZeRO-3 leaves parameters empty
            raise NotImplementedError("thought_output='token_mixture' reads the whole embedding matrix, which DeepSpeed "
                                      "ZeRO-3 partitions: train it with DDP or FSDP2.")
        if self.config.snap_thoughts and not self.training:
            return self._snap_to_tokens(outputs)
        if torch.is_grad_enabled() and outputs.requires_grad:
            # The (B, K, V) weights are a training step's largest tensors once a row has several `<think>` and N_sup
            # steps: recompute them in the backward pass instead of keeping them.
            return checkpoint(self._mix_token_embeddings, outputs, use_reentrant=False)
        return self._mix_token_embeddings(outputs)

    def _token_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """(B, K, V) the outputs read as tokens: the final norm, then the tied embeddings (the LM head's weight)."""
        return F.linear(self.language_model.norm(outputs), self.get_input_embeddings().weight)

    def _mix_token_embeddings(self, outputs: torch.Tensor) -> torch.Tensor:
        embeddings = self.get_input_embeddings().weight  # (V, D), also the LM head's
        logits = self._token_logits(outputs)  # (B, K, V)
        mixture = logits.float().softmax(dim=-1).to(embeddings.dtype) @ embeddings
        if not self.config.snap_thoughts:
            return mixture
        # Training with snapped thoughts: what the backbone reads is the token, as at inference, and the outputs
        # learn through the mixture, the argmax having no gradient.
        return StraightThrough.apply(embeddings[logits.argmax(dim=-1)].detach(), mixture)

    def _snap_to_tokens(self, outputs: torch.Tensor) -> torch.Tensor:
        """`snap_thoughts`: the embedding of the token each output's mixture weighs most (its argmax)."""
        return self.get_input_embeddings().weight[self._token_logits(outputs).argmax(dim=-1)]

    def _read_thoughts(self, cache: ThoughtCache, kinds: torch.Tensor, thoughts: torch.Tensor) -> torch.Tensor:
        """`thought_feedback` without answers to score: the backbone's last-layer hidden states over `thoughts`
        (B, K, D) placed after the context, as the answer would see them; the cache is then as it was."""
        with cache.scratch():
            return self._extend(cache, *self._joined([(thoughts, kinds)]), torch.zeros_like(kinds[:, 0]))

    def _answer_pass(self, cache, layout: ChunkLayout, j: int, thoughts, prior_thinks):
        """Deep supervision: the j-th `<think>`'s [thoughts; answer] given an intermediate step's thoughts, run on the
        context's cache, which is then as it was. Returns the input-aligned hidden states (see `SupervisedStep`) and
        the thoughts' own (B, K, D): what `thought_feedback` reads, as the thoughts never see the answer."""
        thought_columns, answer_columns = layout.thoughts(j), layout.tokens(j + 1)
        columns = [(thoughts, layout.kinds[:, thought_columns])]
        answer_drop = (prior_thinks + j + 1) * self.config.num_latents
        hidden = []
        with cache.scratch():
            if self.config.thought_window == "slide":  # as in the main pass: the thoughts run apart
                hidden.append(self._extend(cache, *columns[0], torch.zeros_like(prior_thinks)))
                columns = []
            if answer_columns.stop > answer_columns.start:
                columns.append((self.get_input_embeddings()(layout.ids[:, answer_columns]),
                                layout.kinds[:, answer_columns]))
            if columns:
                hidden.append(self._extend(cache, *self._joined(columns), answer_drop))
        hidden = torch.cat(hidden, dim=1)  # (B, K + W, D) from the first thought column on
        columns = (layout.out_columns - thought_columns.start).clamp(0, hidden.shape[1] - 1)
        return self._input_aligned(hidden, columns), hidden[:, : thoughts.shape[1]]

    @staticmethod
    def _thought_stats(thinking: Thinking) -> dict:
        stats = {"thought_norm": thinking.thoughts.float().norm(dim=-1).mean()}
        halt_logit = thinking.steps[-1].halt_logit
        if halt_logit is not None:
            stats["halt_probability"] = torch.sigmoid(halt_logit).mean()
            stats["supervision_steps"] = thinking.steps_used.mean()
        return stats

    @staticmethod
    def _mean_stats(stats: list[dict]) -> dict:
        if not stats:
            return {}
        return {key: torch.stack([s[key] for s in stats]).mean() for key in stats[0]}


class SmolLMTRMForCausalLM(SmolLMTRMPreTrainedModel, GenerationMixin):
    """`SmolLMTRMModel` plus the backbone's LM head, the loss (answer cross-entropy with deep supervision and the
    halting BCE) and the generation glue."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    # `score_tokens`' fused kernel when the head is a plain linear layer (`TRMSFTTrainer` sets TRL's); None: chunks
    fused_token_scorer: FusedTokenScorer | None = None
    loss_chunk_tokens = LOSS_CHUNK_TOKENS

    def __init__(self, config: SmolLMTRMConfig, backbone: PreTrainedModel | None = None):
        """`backbone`: a loaded `*ForCausalLM` whose body and head are used as they are (`from_base`); without it
        both are built from `config.text_config`."""
        super().__init__(config)
        text = config.text_config
        if backbone is None:
            self.model = SmolLMTRMModel(config)
            self.lm_head = nn.Linear(text.hidden_size, text.vocab_size, bias=False)
        else:
            self.model = SmolLMTRMModel(config, language_model=getattr(backbone, backbone.base_model_prefix))
            self.lm_head = backbone.get_output_embeddings()
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    # ------------------------------------------------------------------------------------------------------------
    # Building from a pretrained backbone
    # ------------------------------------------------------------------------------------------------------------

    @classmethod
    def from_base(cls, base, tokenizer=None, **settings) -> "SmolLMTRMForCausalLM":
        """Wrap pretrained backbone weights and initialise the TRM.

        `base` is a Hub id, a local folder, or a loaded `*ForCausalLM` model. Loading arguments (`gguf_file`, `dtype`,
        `revision`, `attn_implementation`, ...) go to `AutoModelForCausalLM.from_pretrained`; the other settings are
        `SmolLMTRMConfig` fields. `<think>` and `</think>` are added to `tokenizer` (loaded from `base` when not given
        and `base` is a path) when it lacks them, and the embeddings are resized. The tokenizer is returned on
        `model.tokenizer` so that callers can save it beside the model.
        """
        # Only the thoughts' own settings go to the config: names that every PreTrainedConfig also has (`dtype`,
        # `output_hidden_states`, ...) are loading arguments here, as they are for from_pretrained.
        trm_settings = {k: settings.pop(k) for k in list(settings) if k in SmolLMTRMConfig.thought_settings()}
        if isinstance(base, (str, bytes)) or hasattr(base, "__fspath__"):
            if tokenizer is None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(base, gguf_file=settings.get("gguf_file"))
            base = AutoModelForCausalLM.from_pretrained(base, **settings)
        elif settings:
            raise TypeError(f"from_base got loading arguments {sorted(settings)} with an already loaded model.")
        if tokenizer is not None:
            add_think_tokens(tokenizer, base)
            trm_settings.setdefault("think_token_id", tokenizer.convert_tokens_to_ids(THINK_TOKENS[0]))
        config = SmolLMTRMConfig(text_config=base.config, **trm_settings)
        # The thought module is built empty here and initialised below. The backbone is passed in rather than built
        # and replaced: under ZeRO-3, building one would initialise it, partitioned, on the meta device.
        with torch.device("meta"):
            model = cls(config, backbone=base)
        model.generation_config = base.generation_config
        model._materialize_thought_module(base.device, base.dtype)
        model.tokenizer = tokenizer
        return model

    def _materialize_thought_module(self, device: torch.device, dtype: torch.dtype) -> None:
        """Allocate and initialise the thought module built on the meta device by `from_base`.

        It is drawn on the CPU in float32 from the seed last set (`torch.manual_seed`, the Trainer's `set_seed`),
        then moved. So a seed gives the same thought module on every rank and whatever happened since the seed was
        set: under ZeRO-3 the backbone is loaded onto the GPU (another generator), and resizing the embeddings for
        new think tokens draws a different amount of random numbers when they are partitioned.
        """
        module = self.model.thoughts
        if module is None:
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch.initial_seed())
            module.to_empty(device="cpu").float()
            module.apply(self._init_weights)
            module.to(device=device, dtype=dtype)
        if isinstance(module, HiddenStateTRM):
            embeddings = self.get_input_embeddings().weight
            with torch.no_grad(), gathered(embeddings):
                scale = embeddings.float().pow(2).mean().sqrt().item()
                module.out_norm.weight.fill_(scale)
                if hasattr(module, "prior_scale"):
                    module.prior_scale.fill_(scale)

    # ------------------------------------------------------------------------------------------------------------
    # Forward and loss
    # ------------------------------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: ThoughtCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        n_cycles: int | None = None,
        n_supervision_steps: int | None = None,
        insert_thoughts: bool = True,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        thought_labels: torch.LongTensor | None = None,
        return_logits: bool | None = None,
        forced_thoughts: torch.LongTensor | None = None,
        **kwargs,
    ) -> SmolLMTRMOutput:
        """See `SmolLMTRMModel.forward`. `labels` (unshifted, -100 ignored) give the loss: every supervision step of
        every `<think>` is scored on its answer. `thought_labels` [B, S, K] (with `labels`; -100 ignored) add the step
        probe: `thought_labels[:, j, i]` is the token that thought i of the row's j-th `<think>` in `input_ids` must
        decode, and the probe's cross-entropy enters the loss with `config.probe_loss_weight`. `forced_thoughts`: see
        `SmolLMTRMModel.forward`.

        The loss runs the LM head on the scored columns only. `return_logits` (default: not when training with
        `labels`) also returns the logits of every column: [B, L, V] of them is most of a training step's memory and
        time at a small backbone's width, for nothing the loss needs."""
        reject_unknown_arguments(kwargs, "SmolLMTRMForCausalLM.forward", ("num_items_in_batch",))
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            inputs_embeds=inputs_embeds, use_cache=use_cache, n_cycles=n_cycles,
            n_supervision_steps=n_supervision_steps, supervise=labels is not None, insert_thoughts=insert_thoughts,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            forced_thoughts=forced_thoughts,
        )
        hidden = outputs.last_hidden_state
        if labels is None and logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        if return_logits is None:
            return_logits = labels is None or not self.training
        logits = self.lm_head(hidden) if return_logits else None
        loss = lm_loss = halt_loss = probe_loss = probe_accuracy = token_correct = forced_lm_loss = None
        if thought_labels is not None and labels is None:
            raise ValueError("thought_labels score the thoughts in training: pass labels too.")
        if labels is not None:
            targets = next_token_targets(labels, valid_columns(input_ids, attention_mask))
            lm_loss, halt_loss, token_correct = self._loss(hidden, targets, outputs.supervision,
                                                           kwargs.get("num_items_in_batch"), logits)
            if thought_labels is not None:
                probe_loss, probe_accuracy = self._probe_loss(thought_labels, outputs.supervision)
            lm_targets = self.forced_lm_targets(thought_labels, forced_thoughts)
            if lm_targets is not None and self.config.forced_lm_loss_weight > 0:
                forced_lm_loss = self._forced_lm_loss(lm_targets, outputs.supervision)
            loss = self.combine_losses(lm_loss, halt_loss, probe_loss, forced_lm_loss)
        return SmolLMTRMOutput(
            loss=loss, lm_loss=lm_loss, halt_loss=halt_loss, probe_loss=probe_loss, probe_accuracy=probe_accuracy,
            forced_lm_loss=forced_lm_loss,
            logits=logits, token_correct=token_correct, cache=outputs.cache,
            hidden_states=outputs.hidden_states, halt_probability=outputs.halt_probability,
            supervision_steps=outputs.supervision_steps, thought_norm=outputs.thought_norm,
        )

    def combine_losses(self, lm_loss: torch.Tensor, halt_loss: torch.Tensor, probe_loss: torch.Tensor | None = None,
                       forced_lm_loss: torch.Tensor | None = None) -> torch.Tensor:
        """The loss that trains the model: answer cross-entropy plus the weighted halting BCE (and step probe, and the
        forced thoughts' next-token loss)."""
        loss = lm_loss + self.config.halt_loss_weight * halt_loss
        if probe_loss is not None:
            loss = loss + self.config.probe_loss_weight * probe_loss
        if forced_lm_loss is not None:
            loss = loss + self.config.forced_lm_loss_weight * forced_lm_loss
        return loss

    def forced_lm_targets(self, thought_labels: torch.Tensor | None,
                          forced_thoughts: torch.Tensor | None) -> torch.Tensor | None:
        """[B, S, K] the tokens `forced_lm_loss_weight` scores at the thought positions (-100: none), as
        `forced_lm_scope` chooses: the forced thoughts', or every labelled thought's (the forced ones' when no labels
        are given)."""
        every = self.config.forced_lm_scope == "all" and thought_labels is not None
        return thought_labels if every else forced_thoughts

    def _forced_lm_loss(self, targets: torch.Tensor, supervision: ThoughtSupervision) -> torch.Tensor:
        """Mean next-token cross-entropy of the backbone over `targets` (`forced_lm_targets`), each predicted from the
        column before it: it learns to write a step inside the thought positions, as it writes written reasoning,
        so that its reading there (`thought_next_token_prior`) is the step's next token."""
        shared = min(supervision.step_lm_states.shape[1], targets.shape[1])
        states = supervision.step_lm_states[:, :shared]  # (B, S', K, D)
        targets = targets[:, :shared]
        scored = targets != IGNORE_INDEX
        ce, _ = self.score_tokens(states[scored], targets[scored])
        return ce.sum() / scored.sum().clamp(min=1)

    def _probe_loss(self, thought_labels: torch.Tensor, supervision: ThoughtSupervision):
        """Mean cross-entropy of the labelled thoughts decoded as tokens, every supervision step scored (weighted
        1 / steps per `<think>`), and the share of them the last supervision step decodes right (detached; the
        thoughts the answer reads): the step probe."""
        think_rows = supervision.think_rows  # (S, B)
        batch, num_labelled, K = thought_labels.shape
        if self.config.thought_mode == "none" or (batch, K) != (think_rows.shape[1], self.config.num_latents):
            raise ValueError(f"thought_labels must be [batch, <think>s, num_latents={self.config.num_latents}] for a "
                             f"model with thoughts, got {list(thought_labels.shape)} "
                             f"(thought_mode={self.config.thought_mode!r}).")
        labelled = (thought_labels != IGNORE_INDEX).any(dim=-1)  # (B, S)
        shared = min(num_labelled, think_rows.shape[0])
        has_think = torch.zeros_like(labelled)
        has_think[:, :shared] = think_rows.T[:, :shared]
        if (labelled & ~has_think).any():
            row, think = (labelled & ~has_think).nonzero()[0].tolist()
            raise ValueError(f"thought_labels label <think> {think} of row {row}, which holds fewer <think>.")
        ce_sum = torch.zeros((), device=thought_labels.device)
        correct = torch.zeros((), device=thought_labels.device)
        for step in supervision.steps:
            if step.think >= num_labelled:
                continue
            targets = thought_labels[:, step.think]  # (B, K)
            scored = targets != IGNORE_INDEX
            # Read as `thought_logits` reads them: the final norm, then the LM head (inside `score_tokens`).
            ce, top1 = self.score_tokens(self.model.language_model.norm(step.readout[scored]), targets[scored])
            ce_sum = ce_sum + ce.sum()
            if step.last:  # the thoughts the answer reads
                correct = correct + top1.sum()
        labelled = (thought_labels != IGNORE_INDEX).sum().clamp(min=1)
        return ce_sum / (labelled * supervision.steps_per_think), (correct / labelled).detach()

    def score_tokens(self, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each target's cross-entropy (N,) float32 under the LM head's logits of `hidden` (N, D) (final-normed
        states), and whether it is their top-1 (N,) bool, without keeping (N, V) logits: a training step's largest
        tensors at a large vocabulary. `fused_token_scorer` computes them when set and the head is a plain linear
        layer; otherwise the head runs on `loss_chunk_tokens` rows at a time, each chunk recomputed in backward."""
        head = self.lm_head
        if self.fused_token_scorer is not None and type(head) is nn.Linear and head.bias is None:
            log_probability, top1 = self.fused_token_scorer(hidden, head.weight, targets)
            return -log_probability.float(), top1
        return chunked_token_scores(head, hidden, targets, self.loss_chunk_tokens)

    def thought_logits(self, readout: torch.Tensor) -> torch.Tensor:
        """Thoughts (..., D) read as tokens (..., V): through the backbone's final norm and LM head, as it reads its
        own last hidden states (a logit lens). Pass a `ThoughtRecord.readout`: with `thought_output="token_mixture"`
        the thoughts are mixtures of embeddings weighted by the softmax of these logits. The step probe scores them;
        `watch_thoughts` reports their argmax."""
        return self.lm_head(self.model.language_model.norm(readout))

    def compile_thoughts(self, mode: str = "default") -> int:
        """torch.compile every TRM network of the model in place (`mode`: one of `COMPILE_MODES`, torch.compile's,
        e.g. "reduce-overhead" for CUDA graphs), with an eager fallback where the compiler fails; the weights, their
        names and what is saved do not change. Returns how many networks were compiled (0 for pause or plain
        models)."""
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile_thoughts: mode must be one of {COMPILE_MODES}, got {mode!r}.")
        networks = [module for module in self.modules() if isinstance(module, TinyRecursiveNetwork)]
        for network in networks:
            network.compile_layers(None if mode == "default" else mode)
        return len(networks)

    @contextlib.contextmanager
    def watch_thoughts(self):
        """While inside, every call of the thought module (one per `<think>` position of a forward or decoding
        step) appends a `ThoughtRecord` to the yielded list: which rows thought, their thoughts, halting
        probabilities per supervision step and the steps used. Rows are the batch's as passed to the module, so
        with `generate()` they are the prompts' rows for greedy search and sampling (beam search reorders them).

            with model.watch_thoughts() as calls:
                out = model.generate(**inputs, max_new_tokens=16)
            tokens = [model.thought_logits(call.readout).argmax(-1) for call in calls]  # (B, K) each
        """
        if self.model.thoughts is None:
            raise ValueError("watch_thoughts: this model has no thoughts (thought_mode='none').")
        calls: list[ThoughtRecord] = []

        def record(module, args, thinking: Thinking):
            context_mask, rows = args[1], args[4]
            halting = [torch.sigmoid(step.halt_logit) for step in thinking.steps if step.halt_logit is not None]
            calls.append(ThoughtRecord(
                rows=torch.ones_like(context_mask[:, 0]) if rows is None else rows.detach().clone(),
                thoughts=thinking.thoughts.detach(), readout=thinking.readout.detach(),
                halt_probability=torch.stack(halting, dim=1).detach() if halting else None,
                steps_used=thinking.steps_used.detach(),
            ))

        handle = self.model.thoughts.register_forward_hook(record)
        try:
            yield calls
        finally:
            handle.remove()

    def _loss(self, hidden, targets, supervision: ThoughtSupervision, num_items_in_batch, logits=None):
        """Token-weighted CE, averaged over supervision steps for answer tokens, plus the halting BCE; and which
        scored columns predict their target (B, L). The scored columns alone are scored (`score_tokens`), unless
        every column's `logits` are there already."""
        scored = targets != IGNORE_INDEX
        if logits is None:
            ce, top1 = self.score_tokens(hidden[scored], targets[scored])
        else:
            logits = logits[scored].float()  # (N, V)
            ce, top1 = F.cross_entropy(logits, targets[scored], reduction="none"), logits.argmax(-1) == targets[scored]
        token_ce = torch.zeros_like(targets, dtype=torch.float)
        token_ce[scored] = ce
        token_correct = torch.zeros_like(scored)
        token_correct[scored] = top1
        per_think = supervision.answers_per_think
        step_weight = torch.where(supervision.answer_index >= 0, 1.0 / per_think, 1.0)
        earlier_ce_sum, earlier_correct = self._score_earlier_steps(targets, scored, supervision)
        ce_sum = (token_ce * step_weight).sum() + earlier_ce_sum / per_think
        # A batch whose labels are all masked scores nothing: a zero loss, not 0 / 0.
        denominator = scored.sum() if num_items_in_batch is None else torch.as_tensor(num_items_in_batch)
        denominator = denominator.to(ce_sum.device).clamp(min=1)
        lm_loss = ce_sum / denominator
        halt_loss = self._halt_loss(scored, scored & ~token_correct, supervision, earlier_correct)
        return lm_loss, halt_loss, token_correct

    def _score_earlier_steps(self, targets, scored, supervision: ThoughtSupervision):
        """CE summed over the answers given the thoughts of earlier supervision steps, and for each step, which rows
        predict every answer token right (None for last steps, scored from the main pass, and unscored ones)."""
        ce_sum = torch.zeros((), device=targets.device)
        correct = []
        for step in supervision.steps:
            if step.hidden is None:
                correct.append(None)
                continue
            answer = scored & (supervision.answer_index == step.think)
            ce, top1 = self.score_tokens(step.hidden[answer], targets[answer])  # only this answer's columns
            ce_sum = ce_sum + ce.sum()
            wrong = torch.zeros_like(answer)
            wrong[answer] = ~top1
            correct.append(~wrong.any(dim=1))
        return ce_sum, correct

    @staticmethod
    def _halt_loss(scored, wrong, supervision: ThoughtSupervision, earlier_correct) -> torch.Tensor:
        """BCE of the halting head against "every answer token is predicted correctly under teacher forcing";
        `wrong` (B, L): the `scored` columns whose top-1 prediction in the main pass misses."""
        halting = [(step, correct) for step, correct in zip(supervision.steps, earlier_correct)
                   if step.halt_logit is not None]
        if not halting:
            return torch.zeros((), device=wrong.device)
        losses = []
        for step, correct in halting:
            answer = scored & (supervision.answer_index == step.think)
            rows = supervision.think_rows[step.think] & answer.any(dim=1)
            if correct is None and not step.last:  # an earlier step whose answer is not scored: nothing to judge
                continue
            if correct is None:  # the last step: its answer is the main pass's
                correct = ~(wrong & answer).any(dim=1)
                forced = supervision.forced_rows
                if forced is not None and step.think < forced.shape[0]:
                    # That pass read forced thoughts, not the ones the halting head judged: no target there.
                    rows = rows & ~forced[step.think]
            losses.append(F.binary_cross_entropy_with_logits(step.halt_logit[rows], correct[rows].float(),
                                                             reduction="none"))
        losses = torch.cat(losses) if losses else wrong.new_zeros(0, dtype=torch.float)
        if losses.numel():
            return losses.mean()
        # No target in this batch (every answer read forced thoughts, or was not scored): a zero that still reaches
        # the halting head, whose gradient DDP then finds (it fails on a parameter left out of the graph).
        return sum(step.halt_logit.sum() for step, _ in halting) * 0.0

    # ------------------------------------------------------------------------------------------------------------
    # Generation
    # ------------------------------------------------------------------------------------------------------------

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        if generation_config.cache_implementation not in (None, "dynamic"):
            raise ValueError(
                f"SmolLMTRM generates with its ThoughtCache only; cache_implementation="
                f"{generation_config.cache_implementation!r} is not supported."
            )
        if model_kwargs.get("cache") is None and generation_config.use_cache is not False:
            model_kwargs["cache"] = ThoughtCache(config=self.config.get_text_config(decoder=True))
        return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)

    def generate(self, *args, max_latent_steps: int | None = None, **kwargs):
        """`generate()` of transformers; also takes `n_cycles` / `n_supervision_steps` for this call. Greedy,
        sampling and beam search are supported; methods that re-run or roll back the cache are refused.

        A `<think>` the model emits costs 1 + K positions: it is generated only while the row can still hold it and
        every token left to generate within the backbone's `max_position_embeddings`, and, with `max_latent_steps`,
        while the row holds fewer `<think>` than that (prompt's included). So a model that keeps thinking stops
        thinking instead of running out of positions."""
        for unsupported in ("assistant_model", "prompt_lookup_num_tokens", "penalty_alpha"):
            if kwargs.get(unsupported) is not None:
                raise NotImplementedError(f"SmolLMTRM does not support `{unsupported}` in generate().")
        if kwargs.get("use_cache") is False and self.config.thought_mode != "none":
            raise NotImplementedError("SmolLMTRM generates with the cache; `use_cache=False` is not supported.")
        Depth.of_call(self.config, kwargs.get("n_cycles"), kwargs.get("n_supervision_steps"))  # fail before decoding
        if max_latent_steps is not None and (isinstance(max_latent_steps, bool) or not isinstance(max_latent_steps, int)
                                             or max_latent_steps < 0):
            raise ValueError(f"max_latent_steps must be an integer >= 0 or None, got {max_latent_steps!r}.")
        prompt = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs"))
        if self.config.thought_mode != "none" and isinstance(prompt, torch.Tensor):
            budget = ThinkingWithinReach(self.config, prompt, kwargs.get("attention_mask"),
                                         self._generation_max_length(prompt.shape[1], kwargs), max_latent_steps)
            if budget.may_ban():  # a logits processor costs every decoding step; most generations cannot need it
                kwargs["logits_processor"] = LogitsProcessorList([*(kwargs.get("logits_processor") or []), budget])
        return super().generate(*args, **kwargs)

    def _generation_max_length(self, prompt_length: int, kwargs: dict) -> int:
        """The sequence length generate() stops at, as it reads `max_new_tokens` / `max_length`."""
        config = kwargs.get("generation_config") or self.generation_config
        max_new_tokens = kwargs.get("max_new_tokens", config.max_new_tokens)
        if max_new_tokens is not None:
            return prompt_length + max_new_tokens
        return kwargs.get("max_length") or config.max_length


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


class ThinkingWithinReach(LogitsProcessor):
    """Bans `<think>` in rows that could not hold its K thoughts and every token still to come within the backbone's
    positions, or that hold `max_latent_steps` `<think>` already (see `SmolLMTRMForCausalLM.generate`)."""

    def __init__(self, config: SmolLMTRMConfig, prompt: torch.Tensor, attention_mask: torch.Tensor | None,
                 max_length: int, max_latent_steps: int | None):
        self.think, self.K, self.max_latent_steps = config.think_token_id, config.num_latents, max_latent_steps
        self.limit = getattr(config.text_config, "max_position_embeddings", None)
        self.prompt_length, self.max_length = prompt.shape[1], max_length
        real = torch.ones_like(prompt, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        self.prompt_tokens = real.sum(dim=1)  # (B,) left padding takes no position
        self.prompt_thinks = ((prompt == self.think) & real).sum(dim=1)  # (B,)
        longest = int(self.prompt_tokens.max()) + max_length - self.prompt_length  # positions without thoughts
        if self.limit is not None and longest + self.K > self.limit:
            logger.warning(f"max_new_tokens leaves some rows no room for a <think> within max_position_embeddings="
                           f"{self.limit} (K={self.K} positions each): those rows will not think.")

    def may_ban(self) -> bool:
        """Whether `<think>` could ever be banned: a cap on latent steps, or a row that would run out of positions if
        every token it generates were a `<think>`."""
        if self.max_latent_steps is not None:
            return True
        if self.limit is None:
            return False
        new_tokens = self.max_length - self.prompt_length
        worst = self.prompt_tokens + new_tokens + self.K * (self.prompt_thinks + new_tokens)
        return bool((worst > self.limit).any())

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        thinks = (input_ids == self.think).sum(dim=1)
        banned = torch.zeros_like(thinks, dtype=torch.bool)
        if self.limit is not None:
            # beam search and num_return_sequences repeat each prompt's row in place
            prompt_tokens = self.prompt_tokens.to(input_ids.device).repeat_interleave(
                input_ids.shape[0] // self.prompt_tokens.shape[0])
            used = prompt_tokens + (input_ids.shape[1] - self.prompt_length) + self.K * thinks
            to_come = self.max_length - input_ids.shape[1]  # this token included
            banned |= used + to_come + self.K > self.limit
        if self.max_latent_steps is not None:
            banned |= thinks >= self.max_latent_steps
        scores[banned, self.think] = float("-inf")
        return scores


class UnknownArgumentError(TypeError, ValueError):
    """A keyword that forward does not take: a misspelled setting (`n_cylces`) must not be silently ignored. Both a
    TypeError (what Python raises for an unexpected keyword) and a ValueError (what generate() raises for one)."""


# Keywords that transformers' callers pass to every model's forward (generate, PEFT) and that mean nothing here.
PASSED_THROUGH = ("return_dict", "cache_position")


def reject_unknown_arguments(kwargs: dict, where: str, also_taken: tuple[str, ...] = ()) -> None:
    unknown = sorted(set(kwargs) - set(PASSED_THROUGH) - set(also_taken))
    if unknown:
        raise UnknownArgumentError(f"{where} got unknown keyword argument(s) {unknown}.")


def valid_columns(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, L) bool: which input columns are real tokens. generate() passes the mask of the whole sequence so far,
    longer than the new ids: its last L columns are theirs."""
    if attention_mask is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    return attention_mask[:, -input_ids.shape[1] :].bool()


def next_token_targets(labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, L) the label each input column predicts: the next label, or -100. A padding column predicts nothing,
    so a left-padded row scores exactly the tokens it scores alone."""
    shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    return shifted.masked_fill(~valid, IGNORE_INDEX)


def chunked_token_scores(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                         chunk_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`SmolLMTRMForCausalLM.score_tokens` through any head module: `chunk_tokens` rows of `hidden` (N, D) at a
    time, each chunk's logits recomputed in the backward pass rather than kept. An empty `hidden` still runs the head
    once, so that a batch with nothing scored keeps a loss connected to the model."""

    def score(hidden_chunk: torch.Tensor, target_chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = head(hidden_chunk).float()  # (chunk, V)
        return F.cross_entropy(logits, target_chunk, reduction="none"), logits.argmax(-1) == target_chunk

    recompute = torch.is_grad_enabled() and hidden.requires_grad
    scores = []
    for start in range(0, max(hidden.shape[0], 1), chunk_tokens):
        chunk = (hidden[start : start + chunk_tokens], targets[start : start + chunk_tokens])
        scores.append(checkpoint(score, *chunk, use_reentrant=False) if recompute else score(*chunk))
    ce, top1 = zip(*scores)
    return torch.cat(ce), torch.cat(top1)


def compiler_errors() -> type[Exception]:
    """What torch.compile raises when its backend cannot compile (inductor's errors included): no compiler for the
    device, a failed kernel build. Imported when needed: dynamo is slow to import and most runs never compile."""
    from torch._dynamo.exc import BackendCompilerFailed

    return BackendCompilerFailed


def real_tokens_first(valid: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """(B, L) each column's index inside its segment once the segment's real tokens are moved before its padding."""

    def rank_among(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        per_segment = torch.zeros(valid.shape[0], num_segments, dtype=torch.long, device=valid.device)
        per_segment.scatter_add_(1, segment, selected)
        before = (per_segment.cumsum(1) - per_segment).gather(1, segment)  # selected columns of earlier segments
        return selected.cumsum(1) - 1 - before, per_segment.gather(1, segment)

    real_rank, real_count = rank_among(valid.long())
    pad_rank, _ = rank_among((~valid).long())
    return torch.where(valid, real_rank, real_count + pad_rank)


def stream_positions(kinds: torch.Tensor) -> torch.Tensor:
    """(B, C) position ids: real columns (tokens and thoughts) count on from 0; padding takes any valid value."""
    return ((kinds != PAD).long().cumsum(dim=1) - 1).clamp(min=0)


def token_ranks(kinds: torch.Tensor) -> torch.Tensor:
    """1-based rank of each TOKEN column among its row's tokens; other columns get a rank that is never dropped."""
    ranks = (kinds == TOKEN).long().cumsum(dim=1)
    return torch.where(kinds == TOKEN, ranks, torch.iinfo(torch.long).max)


def visible_keys(kinds: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """(B, C) keys a query may attend to: not padding, and not among the row's `drop` oldest tokens."""
    return (kinds != PAD) & (token_ranks(kinds) > drop)


def reject_packed_positions(position_ids: torch.Tensor | None, attention_mask: torch.Tensor | None) -> None:
    """Padding-free / packed batches mark sequence starts with position resets; thoughts would cross them."""
    if position_ids is None or attention_mask is not None or position_ids.shape[-1] < 2:
        return
    if (position_ids[..., 1:] - position_ids[..., :-1] != 1).any():
        raise ValueError(
            "Packed or padding-free batches (position_ids that restart inside a row) are not supported by SmolLMTRM: "
            "use padded batches with an attention_mask (TRL: packing=False, padding_free=False)."
        )


def gathered(*parameters: nn.Parameter):
    """Context in which parameters that DeepSpeed ZeRO-3 partitioned hold their full values (to read); else a no-op."""
    if not is_deepspeed_zero3_enabled():
        return contextlib.nullcontext()
    # Imported by name: an `import deepspeed` statement would make transformers require it to load this remote code.
    deepspeed = importlib.import_module("deepspeed")
    return deepspeed.zero.GatheredParameters(list(parameters), modifier_rank=None)


def add_think_tokens(tokenizer, model: PreTrainedModel | None = None) -> list[str]:
    """Add `<think>` and `</think>` as special tokens to a tokenizer that lacks them; resize `model`'s embeddings."""
    # They must be added tokens: as plain text they would split into pieces and never trigger the thoughts.
    missing = [t for t in THINK_TOKENS if t not in tokenizer.get_added_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    # num_embeddings, not weight.shape: ZeRO-3 leaves a partitioned weight empty
    if model is not None and len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return missing


SmolLMTRMConfig.register_for_auto_class()
SmolLMTRMModel.register_for_auto_class("AutoModel")
SmolLMTRMForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = [
    "Depth",
    "HiddenStateTRM",
    "LatentAttentionCompressor",
    "PauseThoughts",
    "SmolLMTRMForCausalLM",
    "SmolLMTRMModel",
    "SmolLMTRMPreTrainedModel",
    "ThoughtCache",
    "TinyRecursiveNetwork",
    "TransformerBlock",
]
