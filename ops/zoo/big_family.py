"""A family of Llama-2-7B-shaped repos whose every byte is computed on demand from a seed.

``hubtree hub serve --big-family N`` serves these so that tests and benchmarks can crawl
"7B" models on a small machine: each repo has Llama-2-7b-hf's 291 tensors (names, shapes,
bf16), two shards and an index (about 13.5 GB), a config and a card, and nothing is ever
stored. Any byte range of any file is a pure function of (seed, repo, file, range).

Values. Entry (r, c) of tensor t of model m is

    W_m[t][r, c] = B[t][r, c] + sum over a in lineage(m), a != root, of D_a[t][r, c]

rounded to bf16, where lineage(m) is m and its ancestors. The base is heavy-tailed like
pretrained weights: ``B = std_t * z * s_row[r] * s_col[c]`` with z standard normal and
lognormal row and column scales (outlier channels; excess kurtosis about 5). A fine-tune's
delta is small, dense and partly low-rank, as full fine-tunes with Adam are:

    D_a[t] = eps_a * g_a[t] * std_t * (sqrt(f) * N + sqrt(1 - f) * U V / sqrt(k)),

eps_a the model's relative step (log-uniform in ``eps_range``, 0.3-1.2% of the weights'
RMS), g_a[t] a per-tensor factor (lognormal), N, U (rows x k) and V (k x cols) standard
normal. Nothing in the values says which way an edge points except what fine-tuning does
to any weights: an independent update adds ``||D||^2`` to the squared norm and, added to
heavy-tailed weights, lowers their kurtosis (``E(B + D)^4 / (E(B + D)^2)^2`` falls as D
is lighter-tailed than B), the witnesses hubtree's direction rule is chosen among.

Every random number is drawn per chunk of ``CHUNK_ROWS`` rows from a Philox stream keyed by
(seed, what, model, tensor, chunk), so a range read costs only the chunks it touches and
any two reads of one byte agree.

The truth (each repo's parent) is ``BigFamily.truth()``: never in the served repos, whose
cards declare their parent for about ``declared_fraction`` of the edges.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import ml_dtypes
import numpy as np

CHUNK_ROWS = 4
ORGS = ("tulu-sim", "vicuna-sim", "openorca-sim", "wizard-sim", "nous-sim", "zephyr-sim")
WORDS = ("chat", "instruct", "code", "math", "medical", "legal", "story", "sql", "agent", "rp", "summ", "qa")
INDEX_FILE = "model.safetensors.index.json"
MAX_SHARD_BYTES = 10_000_000_000  # transformers' max_shard_size="10GB": Llama-2-7b-hf's two shards


@dataclass(frozen=True)
class BigArch:
    """A Llama-style decoder's sizes; the defaults are Llama-2-7B's."""

    layers: int = 32
    hidden: int = 4096
    intermediate: int = 11008
    vocab: int = 32000
    heads: int = 32

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) in the order transformers saves them (embeddings, layers, norm, head)."""
        h, i = self.hidden, self.intermediate
        out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (self.vocab, h))]
        for n in range(self.layers):
            p = f"model.layers.{n}."
            out += [
                (p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (h, h)),
                (p + "self_attn.v_proj.weight", (h, h)), (p + "self_attn.o_proj.weight", (h, h)),
                (p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)),
                (p + "mlp.down_proj.weight", (h, i)),
                (p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,)),
            ]  # fmt: skip
        return out + [("model.norm.weight", (h,)), ("lm_head.weight", (self.vocab, h))]

    def config(self) -> dict:
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": self.hidden,
            "intermediate_size": self.intermediate, "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads, "num_key_value_heads": self.heads, "vocab_size": self.vocab,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "hidden_act": "silu", "torch_dtype": "bfloat16",
        }  # fmt: skip


LLAMA2_7B = BigArch()


@dataclass(frozen=True)
class Placed:
    """A tensor's place in its shard: absolute byte offsets [begin, end)."""

    name: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def cols(self) -> int:
        return math.prod(self.shape[1:]) if len(self.shape) > 1 else self.shape[0]

    @property
    def rows(self) -> int:
        return self.shape[0] if len(self.shape) > 1 else 1


@dataclass(frozen=True)
class Shard:
    path: str
    header: bytes  # the 8-byte length and the JSON, padded to 8 bytes as safetensors does
    tensors: tuple[Placed, ...]  # by offset

    @property
    def size(self) -> int:
        return self.tensors[-1].end if self.tensors else len(self.header)


@functools.lru_cache(maxsize=4)
def layout(arch: BigArch) -> tuple[Shard, ...]:
    """The shards of every repo of ``arch``: same names, shapes and offsets (as real fine-tunes have)."""
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in arch.tensors():
        nbytes = 2 * math.prod(shape)
        if groups[-1] and size + nbytes > MAX_SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += nbytes
    shards = []
    for s, group in enumerate(groups):
        spec, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, shape in sorted(group):  # safetensors lays data out by name
            nbytes = 2 * math.prod(shape)
            spec[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        text = json.dumps(spec, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        start = 8 + len(text)
        placed = tuple(Placed(n, tuple(v["shape"]), start + v["data_offsets"][0], start + v["data_offsets"][1])
                       for n, v in spec.items() if n != "__metadata__")  # fmt: skip
        path = f"model-{s + 1:05d}-of-{len(groups):05d}.safetensors"
        shards.append(Shard(path, struct.pack("<Q", len(text)) + text, tuple(sorted(placed, key=lambda p: p.begin))))
    return tuple(shards)


# ----------------------------------------------------------------------------- the family


@dataclass(frozen=True)
class BigModel:
    repo_id: str
    parent: int  # index in the family, -1 for the root
    depth: int
    eps: float  # relative size of its own fine-tuning step (0 for the root)
    created_at: datetime
    declared: bool  # whether its card names its parent


@dataclass(frozen=True)
class BigFamily:
    """``n`` repos of one pretrained base and its fine-tunes, two or more levels deep.

    Each new model fine-tunes a model already there, up to ``max_depth`` levels below the
    root (the root weighs ``root_weight`` times the others when the parent is drawn), and
    is uploaded one to sixty days after its parent.
    """

    n: int
    seed: int = 0
    arch: BigArch = LLAMA2_7B
    declared_fraction: float = 0.1
    eps_range: tuple[float, float] = (0.003, 0.012)
    dense_fraction: float = 0.5  # share of a step's energy in its dense part, the rest low-rank
    rank: int = 8
    std: float = 0.02
    tail: float = 0.35  # log-sd of the row and column scales
    max_depth: int = 3
    root_weight: float = 3.0

    @functools.cached_property
    def models(self) -> tuple[BigModel, ...]:
        rng = np.random.default_rng([self.seed, 7])
        parent, depth = [-1], [0]
        for i in range(1, self.n):
            open_ = [j for j in range(i) if depth[j] < self.max_depth]
            w = np.array([self.root_weight if j == 0 else 1.0 for j in open_])
            p = 1 if i == 2 else int(rng.choice(open_, p=w / w.sum()))  # a grandchild, whatever the draw
            parent.append(p)
            depth.append(depth[p] + 1)
        edges = np.arange(1, self.n)
        n_declared = round(self.declared_fraction * len(edges))
        declared = set(rng.choice(edges, n_declared, replace=False).tolist()) if n_declared else set()
        lo, hi = np.log(self.eps_range[0]), np.log(self.eps_range[1])
        created = [datetime(2023, 7, 18, tzinfo=timezone.utc)]
        for i in range(1, self.n):
            created.append(created[parent[i]] + timedelta(days=float(rng.uniform(1, 60))))
        out = []
        for i in range(self.n):
            name = "llama-2-7b" if i == 0 else f"llama2-7b-{WORDS[rng.integers(len(WORDS))]}-{i:03d}"
            org = "meta-llama-sim" if i == 0 else ORGS[rng.integers(len(ORGS))]
            eps = 0.0 if i == 0 else float(np.exp(rng.uniform(lo, hi)))
            out.append(BigModel(f"{org}/{name}-s{self.seed}", parent[i], depth[i], eps, created[i], i in declared))
        return tuple(out)

    @functools.cached_property
    def index(self) -> dict[str, int]:
        return {m.repo_id: i for i, m in enumerate(self.models)}

    def truth(self) -> dict[str, str | None]:
        """Each repo's true parent (None for the root): for tests and benchmarks, never served."""
        return {m.repo_id: self.models[m.parent].repo_id if m.parent >= 0 else None for m in self.models}

    def lineage(self, i: int) -> list[int]:
        """The models whose steps make up model i: i and its ancestors, root excluded."""
        out = []
        while self.models[i].parent >= 0:
            out.append(i)
            i = self.models[i].parent
        return out

    # ------------------------------------------------------------------------- files

    def files(self) -> dict[str, int]:
        """Path -> size of every file of a repo (the same for all)."""
        return {s.path: s.size for s in layout(self.arch)} | {INDEX_FILE: len(self.index_json()), "config.json": len(self.config_json())}

    def index_json(self) -> bytes:
        shards = layout(self.arch)
        total = sum(p.end - p.begin for s in shards for p in s.tensors)
        weight_map = {p.name: s.path for s in shards for p in sorted(s.tensors, key=lambda p: p.name)}
        return json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2).encode()

    def config_json(self) -> bytes:
        return json.dumps(self.arch.config(), indent=2).encode()

    def card(self, repo_id: str) -> str:
        """README.md: a license and tags for all, ``base_model`` only where the card declares it."""
        m = self.models[self.index[repo_id]]
        meta = ["license: llama2", "tags:", "- llama", "- text-generation", "pipeline_tag: text-generation"]
        if m.declared:
            meta += [f"base_model: {self.models[m.parent].repo_id}", "base_model_relation: finetune"]
        body = "Pretrained base model." if m.parent < 0 else "A fine-tune of a Llama-2-7B model."
        return "---\n" + "\n".join(meta) + f"\n---\n\n# {repo_id.split('/')[1]}\n\n{body}\n"

    def read(self, repo_id: str, path: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of a weights shard of ``repo_id`` (clipped to the file)."""
        shard = next(s for s in layout(self.arch) if s.path == path)
        end = min(end, shard.size)
        out = bytearray()
        if start < len(shard.header):
            out += shard.header[start : min(end, len(shard.header))]
        i = self.index[repo_id]
        for p in shard.tensors:
            if p.end <= start or p.begin >= end:
                continue
            lo, hi = max(start, p.begin) - p.begin, min(end, p.end) - p.begin
            row_bytes = 2 * p.cols
            r0, r1 = lo // row_bytes, -(-hi // row_bytes)
            block = self.rows(i, p, r0, r1).view(np.uint8).reshape(-1)
            out += block[lo - r0 * row_bytes : hi - r0 * row_bytes].tobytes()
        return bytes(out)

    # ------------------------------------------------------------------------- values

    def rows(self, i: int, p: Placed, r0: int, r1: int) -> np.ndarray:
        """Rows [r0, r1) of tensor ``p`` of model i as little-endian bf16, shape (r1 - r0, cols)."""
        c0, c1 = r0 // CHUNK_ROWS, -(-r1 // CHUNK_ROWS)
        parts = []
        for c in range(c0, c1):
            rows = min(CHUNK_ROWS, p.rows - c * CHUNK_ROWS)
            x = self._base(p, c, rows)
            for a in self.lineage(i):
                x += self._delta(a, p, c, rows)
            parts.append(x)
        block = np.concatenate(parts)[r0 - c0 * CHUNK_ROWS : r1 - c0 * CHUNK_ROWS]
        return block.astype(ml_dtypes.bfloat16)

    def _base(self, p: Placed, chunk: int, rows: int) -> np.ndarray:
        rng = _stream(self.seed, "base", 0, p.name, chunk)
        if len(p.shape) == 1:  # norm weights: positive, near one
            return (1.0 + 0.1 * rng.standard_normal((1, p.cols))).astype(np.float32)
        z = rng.standard_normal((rows, p.cols), dtype=np.float32)
        s_row = _lognormal(rng.standard_normal(rows), self.tail)
        return z * (self.std * s_row[:, None]).astype(np.float32) * self._col_scale(p.name, p.cols)

    def _delta(self, a: int, p: Placed, chunk: int, rows: int) -> np.ndarray:
        m = self.models[a]
        rng = _stream(self.seed, "step", a, p.name, chunk)
        g = float(_lognormal(_stream(self.seed, "gain", a, p.name, 0).standard_normal(1), 0.3)[0])
        scale = np.float32(m.eps * g * (self.std if len(p.shape) > 1 else 0.1))
        dense = rng.standard_normal((rows, p.cols), dtype=np.float32) * np.float32(math.sqrt(self.dense_fraction))
        u = rng.standard_normal((rows, self.rank), dtype=np.float32)
        low = (u @ self._factor(a, p.name, p.cols)) * np.float32(math.sqrt((1 - self.dense_fraction) / self.rank))
        return (dense + low) * scale

    @functools.lru_cache(maxsize=4096)
    def _factor(self, a: int, name: str, cols: int) -> np.ndarray:
        return _stream(self.seed, "factor", a, name, 0).standard_normal((self.rank, cols), dtype=np.float32)

    @functools.lru_cache(maxsize=1024)
    def _col_scale(self, name: str, cols: int) -> np.ndarray:
        return _lognormal(_stream(self.seed, "cols", 0, name, 0).standard_normal(cols), self.tail).astype(np.float32)


def _lognormal(z: np.ndarray, tau: float) -> np.ndarray:
    """exp(tau z - tau^2): mean square one, so scales change the tails, not the RMS."""
    return np.exp(tau * z - tau * tau)


def _stream(seed: int, what: str, model: int, tensor: str, chunk: int) -> np.random.Generator:
    """A Philox generator keyed by all five parts: independent streams, the same on every machine."""
    digest = hashlib.blake2b(f"{seed}/{what}/{model}/{tensor}/{chunk}".encode(), digest_size=16).digest()
    return np.random.Generator(np.random.Philox(key=np.frombuffer(digest, dtype=np.uint64)))
