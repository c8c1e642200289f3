"""A tiny Llama-shaped language model, its synthetic data, and the loops that train it.

The zoo (``hubtree.ops.zoo.build``) needs models whose weights carry the marks of real training,
so that tree recovery, Spectral DeTuning and DSiRe meet the same signals they would meet on
a real hub: a root moves far from its random init, a fine-tune moves a little from its
parent, a LoRA moves only ``A`` and ``B``. Everything here is small enough to train dozens
of models in a minute on two CPU cores, and seeded so that the same seed gives the same bytes.

Tensor names follow Hugging Face's Llama (``model.layers.{i}.self_attn.q_proj.weight``),
so later stages find layers by name exactly as they would on a real checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class TinyConfig:
    """Shape of one architecture; two models with equal configs have equal tensor names and shapes."""

    vocab_size: int = 128
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 128
    max_position_embeddings: int = 64
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5

    @property
    def arch(self) -> str:
        """Short name used in the ground truth to say which models share an architecture."""
        return f"tinygpt-v{self.vocab_size}-d{self.hidden_size}-l{self.num_hidden_layers}"

    def hf_config(self, torch_dtype: str = "float32") -> dict:
        """The ``config.json`` a Hugging Face repo of this model would carry."""
        return {
            "model_type": "tinygpt",
            "architectures": ["TinyGPTForCausalLM"],
            **asdict(self),
            "hidden_act": "silu",
            "tie_word_embeddings": False,
            "torch_dtype": torch_dtype,
        }


# ----------------------------------------------------------------------------- model


def rope_tables(cfg: TinyConfig) -> tuple[Tensor, Tensor]:
    """cos/sin tables of rotary position embeddings (Llama's layout: halves, not interleaved).

    Rotary positions keep the parameter list exactly Llama's: no position-embedding tensor.
    """
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    inv_freq = cfg.rope_theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(cfg.max_position_embeddings, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each (x_j, x_{j+h/2}) pair of a head by its position's angle."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    """Causal multi-head self-attention with square q/k/v/o projections and no biases."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        d = cfg.hidden_size
        self.n_heads = cfg.num_attention_heads
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, self.n_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # The math written out (rather than a fused kernel) keeps CPU results bit-reproducible.
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        y = scores.masked_fill(mask, float("-inf")).softmax(dim=-1) @ v
        return self.o_proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    """Two-matrix SiLU MLP; names follow Llama's up/down (no gate, to stay tiny)."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.up_proj(x)))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """The ``model.`` prefix of Llama's names: embeddings, blocks, final norm."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)


class TinyGPT(nn.Module):
    """Decoder-only LM whose ``state_dict`` names are Hugging Face Llama's."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Decoder(cfg)
        # Untied head: the hub's models list ``lm_head.weight`` as a tensor of its own.
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg)
        n = cfg.max_position_embeddings
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.register_buffer("mask", torch.ones(n, n, dtype=torch.bool).triu(1), persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        t = tokens.shape[1]
        x = self.model.embed_tokens(tokens)
        for block in self.model.layers:
            x = block(x, self.cos[:t], self.sin[:t], self.mask[:t, :t])
        return self.lm_head(self.model.norm(x))


def init_weights(model: TinyGPT, generator: torch.Generator) -> None:
    """nanoGPT's init from an explicit generator, so each root's init depends on its seed only.

    Matrices get N(0, 0.02); the two projections that write into the residual stream
    (o_proj, down_proj) get 0.02 / sqrt(2 * n_layers) so the stream's variance does not
    grow with depth. Norm weights stay at 1.
    """
    residual_std = 0.02 / math.sqrt(2 * model.cfg.num_hidden_layers)
    for name, p in model.named_parameters():
        if p.dim() == 2:
            std = residual_std if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
            nn.init.normal_(p, 0.0, std, generator=generator)


def new_model(cfg: TinyConfig, state: dict[str, Tensor] | None = None, seed: int = 0) -> TinyGPT:
    """A model from ``state`` (a fine-tune starts from its parent) or else a seeded random init."""
    model = TinyGPT(cfg)
    if state is None:
        init_weights(model, torch.Generator().manual_seed(seed))
    else:
        model.load_state_dict(state)
    return model


def state_of(model: nn.Module) -> dict[str, Tensor]:
    """Detached, contiguous copies of the weights, ready for ``safetensors.torch.save_file``."""
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- LoRA


class LoRALinear(nn.Module):
    """``y = W x + (alpha / r) B A x`` with W frozen; only A (r x in) and B (out x r) train.

    PEFT's init: A kaiming-uniform, B zero, so training starts exactly at the base model
    and the update ``(alpha / r) B A`` has rank <= r by construction.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)
        self.scaling = alpha / r

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def delta(self) -> Tensor:
        """The weight update a merge adds to W."""
        return (self.lora_B @ self.lora_A).detach() * self.scaling


def add_lora(
    model: TinyGPT, targets: tuple[str, ...], r: int, alpha: float, generator: torch.Generator
) -> dict[str, LoRALinear]:
    """Freeze ``model`` and wrap every attention projection named in ``targets`` with LoRA.

    Returns the wrappers keyed by module path (``model.layers.0.self_attn.q_proj``), the
    prefix that both the merged weight name and PEFT's adapter tensor names are built on.
    """
    model.requires_grad_(False)
    loras = {}
    for i, block in enumerate(model.model.layers):
        for target in targets:
            lora = LoRALinear(getattr(block.self_attn, target), r, alpha, generator)
            setattr(block.self_attn, target, lora)
            loras[f"model.layers.{i}.self_attn.{target}"] = lora
    return loras


# ----------------------------------------------------------------------------- data

TaskKind = Literal["mix", "markov", "copy", "reverse", "sort"]
TASK_KINDS: tuple[TaskKind, ...] = ("markov", "copy", "reverse", "sort")  # the single tasks that ``mix`` mixes


@dataclass(frozen=True)
class Task:
    """A seeded synthetic sequence distribution.

    Every task owns a random first-order Markov chain drawn from ``seed``. ``markov``
    sequences are walks on it; ``copy`` / ``reverse`` / ``sort`` sequences are ``x SEP f(x)``
    with x a walk on the other tokens and SEP the last vocab id, so the second half is
    predictable only by attending back to the first. The chain makes each task's data its
    own: two fine-tunes of one parent then move in different directions, as fine-tunes on
    different real datasets do (with uniform x, all copy-like tasks pull the same way).
    ``mix`` draws each sequence from one of the four on the same chain: a pretraining
    corpus broad enough that attention has something to learn (first-order walks alone
    leave the attention matrices at their init).
    """

    kind: TaskKind
    seed: int

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.seed % 0x10000:04x}"

    def sample(self, n: int, seq_len: int, vocab: int, generator: torch.Generator) -> Tensor:
        """``n`` sequences of ``seq_len + 1`` tokens (inputs and shifted targets together)."""
        if self.kind == "mix":
            which = torch.randint(0, len(TASK_KINDS), (n,), generator=generator)
            seqs = torch.empty(n, seq_len + 1, dtype=torch.long)
            for i, kind in enumerate(TASK_KINDS):
                rows = (which == i).nonzero()[:, 0]
                seqs[rows] = Task(kind, self.seed).sample(len(rows), seq_len, vocab, generator)
            return seqs
        if self.kind == "markov":
            return self._walks(n, seq_len + 1, vocab, generator)
        x = self._walks(n, seq_len // 2, vocab - 1, generator)
        y = {"copy": x, "reverse": x.flip(1), "sort": x.sort(dim=1).values}[self.kind]
        return torch.cat([x, torch.full((n, 1), vocab - 1), y], dim=1)

    def _walks(self, n: int, length: int, states: int, generator: torch.Generator) -> Tensor:
        # Peaked rows (logits ~ 3 N(0,1)) give a chain with real structure to learn.
        chain = torch.Generator().manual_seed(self.seed)
        cdf = (3.0 * torch.randn(states, states, generator=chain)).softmax(dim=-1).cumsum(dim=-1)
        u = torch.rand(length, n, 1, generator=generator)
        seq = torch.empty(n, length, dtype=torch.long)
        seq[:, 0] = torch.randint(0, states, (n,), generator=generator)
        for t in range(1, length):
            # Inverse-CDF sampling of each row's next token; clamp guards cumsum's rounding.
            seq[:, t] = torch.searchsorted(cdf[seq[:, t - 1]], u[t]).clamp_max(states - 1)[:, 0]
        return seq


# ----------------------------------------------------------------------------- training


@dataclass
class TrainLog:
    """What one training run did; ``first_loss``/``last_loss`` are on held-out data of its task."""

    steps: int
    lr: float
    first_loss: float
    last_loss: float
    n_samples: int
    epochs: int
    data: str


def next_token_loss(model: nn.Module, seqs: Tensor) -> Tensor:
    """Mean cross-entropy of predicting token t+1 from tokens <= t."""
    logits = model(seqs[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), seqs[:, 1:].reshape(-1))


def batches(data: Tensor, batch_size: int, epochs: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Shuffled mini-batches over exactly the rows of ``data``, ``epochs`` times."""
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        yield from (data[order[i : i + batch_size]] for i in range(0, len(data), batch_size))


def train(
    model: TinyGPT,
    params: list[nn.Parameter],
    task: Task,
    *,
    n_samples: int,
    epochs: int,
    batch_size: int,
    lr: float,
    seq_len: int,
    seed: int,
) -> TrainLog:
    """AdamW on next-token loss over ``n_samples`` sequences of ``task`` for ``epochs`` epochs.

    Pretraining and full fine-tunes pass one epoch over fresh samples (steps x batch);
    adapters pass many epochs over a fixed small set, so the set's size shapes the update,
    which is exactly what DSiRe reads back.
    """
    g = torch.Generator().manual_seed(seed)
    vocab = model.cfg.vocab_size
    data = task.sample(n_samples, seq_len, vocab, g)
    held_out = task.sample(64, seq_len, vocab, g)
    opt = torch.optim.AdamW(params, lr=lr)
    with torch.no_grad():
        first = next_token_loss(model, held_out).item()
    steps = 0
    for batch in batches(data, batch_size, epochs, g):
        loss = next_token_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
    with torch.no_grad():
        last = next_token_loss(model, held_out).item()
    return TrainLog(steps, lr, first, last, n_samples, epochs, task.name)
