"""A local model hub of tiny LMs made by real training, with the ground truth kept apart.

Every later stage (crawl, statistics, MoTHer tree recovery, Spectral DeTuning, DSiRe) needs
a hub whose answers are known. ``build_zoo`` trains one: unrelated families (root pretrained
from random init, children and grandchildren fully fine-tuned on other data), one float16
copy, one sharded repo, and LoRA fine-tunes of a base that is *not* published, some merged
into full weights and some published as PEFT adapters trained on known numbers of samples.

Layout written under ``out``::

    hub/<org>/<name>/config.json, model.safetensors (or shards + index), README.md
    hub/<org>/<name>/adapter_config.json, adapter_model.safetensors, README.md   (adapters)
    hidden/base.safetensors      the unpublished LoRA base (Spectral DeTuning's target)
    truth.json                   ZooTruth: parents, relations, training runs, dataset sizes

Nothing in ``hub/`` says more than a real card would: only some cards declare ``base_model``.

Example:
    >>> truth = build_zoo(Path("/tmp/zoo"), seed=0)          # doctest: +SKIP
    >>> root = truth.families["atlas"][0]                    # doctest: +SKIP
    >>> truth.models[root].parent, truth.models[root].depth  # doctest: +SKIP
    (None, 0)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import yaml
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm import tqdm

from hubtree.ops.torch_threads import intra_op_threads
from hubtree.ops.zoo.model import (
    TASK_KINDS,
    LoRALinear,
    Task,
    TinyConfig,
    TinyGPT,
    TrainLog,
    add_lora,
    new_model,
    state_of,
    train,
)

HIDDEN_ID = "zoo-hidden/base"
HIDDEN_FAMILY = "umbra"
ORGS = ("acme", "lab-b", "nightly", "openzoo")
FAMILY_NAMES = ("atlas", "birch", "cobalt", "dune", "ember", "fjord", "gale", "heron", "iris", "juniper", "kelp")
LICENSES = ("apache-2.0", "mit", "cc-by-4.0")

SMALL = TinyConfig()
DEEP = TinyConfig(hidden_size=48, num_hidden_layers=3, intermediate_size=96)

Weights = dict[str, Tensor]
Relation = Literal["finetune", "quantized", "merged_lora", "adapter"]
# What a card may say: a merged LoRA is, to the Hub, just a fine-tune.
CARD_RELATION = {"finetune": "finetune", "quantized": "quantized", "merged_lora": "finetune", "adapter": "adapter"}


@dataclass(frozen=True)
class ZooSpec:
    """Sizes and training settings of one scale unit of the zoo; ``scale`` repeats it.

    Defaults build 3 families x 10 models + 1 float16 copy, a hidden base, 6 merged LoRAs
    and 20 adapters in about a minute of one CPU core. Fine-tunes use a 10x lower lr and 5x
    fewer steps than roots, so they learn their new data yet stay near their parent.
    """

    archs: tuple[TinyConfig, ...] = (SMALL, SMALL, DEEP)  # one per family; equal configs, equal tensor shapes
    hidden_arch: TinyConfig = SMALL
    children: int = 3
    grandchildren: int = 2  # per child
    seq_len: int = 32
    root_batch_size: int = 32
    root_steps: int = 300
    root_lr: float = 3e-3
    batch_size: int = 16  # fine-tunes, merged LoRAs and adapters
    ft_steps: int = 60
    ft_lr: float = 3e-4
    declared_fraction: float = 0.4  # of full fine-tunes and merged LoRAs whose card names the parent
    lora_rank: int = 4
    lora_alpha: int = 8
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    lora_lr: float = 5e-4
    merged: int = 6
    merged_steps: int = 100
    adapter_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)
    adapters_per_size: int = 4
    # Every adapter takes this many optimizer steps whatever its data size (a max_steps
    # budget), so small sets are seen for more epochs; with a fixed number of epochs instead,
    # steps would grow with size and the update's norm alone would give the size away.
    adapter_steps: int = 80

    @classmethod
    def tiny(cls) -> ZooSpec:
        """A zoo of the same shape in a few seconds, for tests."""
        small = TinyConfig(
            vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=16,
        )
        deep = replace(small, hidden_size=24, num_hidden_layers=2, intermediate_size=48)
        return cls(
            archs=(small, small, deep), hidden_arch=small, children=2, grandchildren=1, seq_len=16,
            root_batch_size=16, root_steps=40, root_lr=1e-2, batch_size=8, ft_steps=10, ft_lr=1e-3,
            lora_rank=2, lora_alpha=4, lora_lr=1e-2, merged=3, merged_steps=10,
            adapter_sizes=(8, 32), adapters_per_size=2, adapter_steps=4,
        )


# ----------------------------------------------------------------------------- ground truth


@dataclass
class ModelTruth:
    """One model's place in the zoo. ``parent``/``relation`` are None for roots."""

    family: str
    parent: str | None
    relation: Relation | None
    depth: int
    declared: bool  # whether its card (or adapter_config) names the parent
    arch: str
    published: bool  # False only for the hidden LoRA base
    train: TrainLog | None  # None for the float16 copy


@dataclass
class Edge:
    parent: str
    child: str
    relation: Relation
    declared: bool


@dataclass
class LoraTruth:
    rank: int
    alpha: int
    targets: list[str]
    merged: list[str]
    adapters: dict[str, int]  # repo id -> number of training samples (DSiRe's label)


@dataclass
class DatasetTruth:
    """A named dataset of a labelled zoo: what a card would link to, and how a user might ask for it."""

    family: str
    task: str  # the synthetic task behind the name
    description: str
    paraphrase: str  # the same meaning in other words: the search benchmark's query


@dataclass
class ZooTruth:
    """Everything the hub hides: serialised to ``out/truth.json``, never inside ``out/hub``."""

    seed: int
    scale: int
    models: dict[str, ModelTruth]
    edges: list[Edge]
    families: dict[str, list[str]]  # family -> repo ids, root first
    hidden_bases: dict[str, str]  # repo id -> safetensors path relative to out
    lora: LoraTruth
    # Labelled zoos only (``hubtree.ops.zoo.labelled``): dataset name -> its description and a
    # paraphrase of it, and repo id -> the datasets it was fine-tuned on (multi-hot labels).
    datasets: dict[str, DatasetTruth] = field(default_factory=dict)
    labels: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> ZooTruth:
        models = {}
        for repo_id, m in d["models"].items():
            models[repo_id] = ModelTruth(**{**m, "train": TrainLog(**m["train"]) if m["train"] else None})
        edges = [Edge(**e) for e in d["edges"]]
        datasets = {name: DatasetTruth(**v) for name, v in d.get("datasets", {}).items()}
        return cls(d["seed"], d["scale"], models, edges, d["families"], d["hidden_bases"], LoraTruth(**d["lora"]),
                   datasets, d.get("labels", {}))


def load_truth(path: Path) -> ZooTruth:
    """Read ``truth.json`` back into dataclasses."""
    return ZooTruth.from_dict(json.loads(Path(path).read_text()))


# ----------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Recipe:
    """How a model is trained: ``epochs`` passes over ``n_samples`` sequences of ``task``."""

    task: Task
    n_samples: int
    epochs: int
    batch_size: int
    lr: float


@dataclass(frozen=True)
class Job:
    """One model to make: where it sits in the tree, how it is trained, how it is published."""

    repo_id: str
    family: str
    cfg: TinyConfig
    parent: str | None = None
    relation: Relation | None = None
    depth: int = 0
    recipe: Recipe | None = None  # None: the float16 copy, which is not trained
    declared: bool = False
    base_as_list: bool = False  # card writes ``base_model: [id]`` rather than ``base_model: id``
    published: bool = True
    shards: int = 1


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (Python's ``hash`` is salted per process)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def family_name(i: int) -> str:
    n = len(FAMILY_NAMES)
    return FAMILY_NAMES[i % n] + (str(i // n + 1) if i >= n else "")


def plan_zoo(spec: ZooSpec, seed: int, scale: int) -> list[Job]:
    """All jobs in training order: every parent comes before its children, as on a real hub."""
    rng = random.Random(seed)
    jobs: list[Job] = []
    for i, cfg in enumerate(spec.archs * scale):
        role = i % len(spec.archs)
        jobs += _family_jobs(spec, cfg, family_name(i), seed, rng, quantized_copy=role == 0, sharded_root=role == 1)
    jobs += _lora_jobs(spec, seed, scale, rng)
    return _declare(jobs, spec.declared_fraction, rng)


def _pretraining(spec: ZooSpec, seed: int, family: str) -> Recipe:
    """A root's recipe: many steps at a high lr on the family's own ``mix`` corpus."""
    task = Task("mix", derive_seed(seed, family, "pretrain"))
    return Recipe(task, spec.root_steps * spec.root_batch_size, 1, spec.root_batch_size, spec.root_lr)


def _family_jobs(
    spec: ZooSpec,
    cfg: TinyConfig,
    family: str,
    seed: int,
    rng: random.Random,
    quantized_copy: bool,
    sharded_root: bool,
) -> list[Job]:
    """Root, then each child followed by its grandchildren; fine-tunes draw a task and an org."""
    recipe, shards = _pretraining(spec, seed, family), 2 if sharded_root else 1
    root = Job(f"{rng.choice(ORGS)}/{family}-base", family, cfg, recipe=recipe, shards=shards)
    jobs = [root]
    if quantized_copy:
        jobs.append(Job(f"{root.repo_id}-fp16", family, cfg, root.repo_id, "quantized", depth=1))

    numbers = itertools.count()

    def finetune(parent: Job) -> Job:
        k = next(numbers)
        task = Task(rng.choice(TASK_KINDS), derive_seed(seed, family, "finetune", k))
        recipe = Recipe(task, spec.ft_steps * spec.batch_size, 1, spec.batch_size, spec.ft_lr)
        repo_id = f"{rng.choice(ORGS)}/{family}-{task.kind}-{k}"
        return Job(repo_id, family, cfg, parent.repo_id, "finetune", parent.depth + 1, recipe)

    for _ in range(spec.children):
        child = finetune(root)
        jobs.append(child)
        jobs += [finetune(child) for _ in range(spec.grandchildren)]
    return jobs


def _lora_jobs(spec: ZooSpec, seed: int, scale: int, rng: random.Random) -> list[Job]:
    """The hidden base, merged LoRAs (fresh data) and adapters (exactly n samples, a fixed step budget)."""
    cfg = spec.hidden_arch
    jobs = [Job(HIDDEN_ID, HIDDEN_FAMILY, cfg, recipe=_pretraining(spec, seed, HIDDEN_FAMILY), published=False)]
    runs = [("merged_lora", spec.merged_steps * spec.batch_size, 1)] * (spec.merged * scale)
    for n in spec.adapter_sizes:
        epochs = max(1, round(spec.adapter_steps * spec.batch_size / n))
        runs += [("adapter", n, epochs)] * (spec.adapters_per_size * scale)
    for k, (relation, n_samples, epochs) in enumerate(runs):
        task = Task(TASK_KINDS[k % len(TASK_KINDS)], derive_seed(seed, HIDDEN_FAMILY, "lora", k))
        recipe = Recipe(task, n_samples, epochs, spec.batch_size, spec.lora_lr)
        name = f"{HIDDEN_FAMILY}-{'lora-' if relation == 'adapter' else ''}{task.kind}-{k}"
        jobs.append(Job(f"{rng.choice(ORGS)}/{name}", HIDDEN_FAMILY, cfg, HIDDEN_ID, relation, 1, recipe))
    return jobs


def _declare(jobs: list[Job], fraction: float, rng: random.Random) -> list[Job]:
    """Cards name the parent for a ``fraction`` of fine-tunes, and always for copies and adapters.

    Declared cards alternate between the string and the list form of ``base_model``.
    """
    optional = [j.repo_id for j in jobs if j.relation in ("finetune", "merged_lora")]
    chosen = set(rng.sample(optional, round(fraction * len(optional))))
    out, n_declared = [], 0
    for job in jobs:
        if job.repo_id in chosen or job.relation in ("quantized", "adapter"):
            job = replace(job, declared=True, base_as_list=n_declared % 2 == 1)
            n_declared += 1
        out.append(job)
    return out


# ----------------------------------------------------------------------------- train


def _fit(job: Job, model: TinyGPT, params: list[nn.Parameter], spec: ZooSpec, seed: int) -> TrainLog:
    r = job.recipe
    return train(
        model, params, r.task, n_samples=r.n_samples, epochs=r.epochs, batch_size=r.batch_size, lr=r.lr,
        seq_len=spec.seq_len, seed=derive_seed(seed, job.repo_id),
    )


def _train_full(job: Job, parent: Weights | None, spec: ZooSpec, seed: int) -> tuple[Weights, TrainLog]:
    """Pretrain from a seeded init (no parent) or fully fine-tune every weight of the parent."""
    model = new_model(job.cfg, parent, seed=derive_seed(seed, job.repo_id, "init"))
    log = _fit(job, model, list(model.parameters()), spec, seed)
    return state_of(model), log


def _train_lora(job: Job, base: Weights, spec: ZooSpec, seed: int) -> tuple[dict[str, LoRALinear], TrainLog]:
    """Train only A and B on the targeted projections of a frozen copy of ``base``."""
    model = new_model(job.cfg, base)
    init = torch.Generator().manual_seed(derive_seed(seed, job.repo_id, "init"))
    loras = add_lora(model, spec.lora_targets, spec.lora_rank, spec.lora_alpha, init)
    log = _fit(job, model, [p for lora in loras.values() for p in (lora.lora_A, lora.lora_B)], spec, seed)
    return loras, log


def _make(job: Job, parent: Weights | None, spec: ZooSpec, seed: int) -> tuple[Weights, TrainLog | None]:
    """The tensors a job publishes (full weights, or PEFT tensors for an adapter) and its training log."""
    if job.relation == "quantized":
        return {k: v.half() for k, v in parent.items()}, None
    if job.relation in ("merged_lora", "adapter"):
        loras, log = _train_lora(job, parent, spec, seed)
        return (peft_tensors(loras) if job.relation == "adapter" else merge_lora(parent, loras)), log
    return _train_full(job, parent, spec, seed)


def merge_lora(base: Weights, loras: dict[str, LoRALinear]) -> Weights:
    """``W' = W + (alpha / r) B A`` on the targeted layers; every other tensor is the base's own."""
    merged = dict(base)
    for path, lora in loras.items():
        merged[f"{path}.weight"] = base[f"{path}.weight"] + lora.delta()
    return merged


def peft_tensors(loras: dict[str, LoRALinear]) -> Weights:
    """PEFT's adapter names: ``base_model.model.<module>.lora_A.weight`` (r, in), ``lora_B`` (out, r)."""
    tensors = {}
    for path, lora in loras.items():
        tensors[f"base_model.model.{path}.lora_A.weight"] = lora.lora_A.detach().clone()
        tensors[f"base_model.model.{path}.lora_B.weight"] = lora.lora_B.detach().clone()
    return tensors


# ----------------------------------------------------------------------------- write


def hidden_path(repo_id: str) -> str:
    """Where an unpublished base's weights go, relative to ``out`` (outside the hub)."""
    return f"hidden/{repo_id.split('/')[1]}.safetensors"


def model_card(job: Job, seed: int, rank: int) -> str:
    """README.md with YAML front matter, saying only what a real uploader might."""
    rng = random.Random(derive_seed(seed, job.repo_id, "card"))
    task = job.recipe.task if job.recipe else None
    kind = task.kind if task else None
    tags = ["tinygpt", "synthetic"] + ([kind] if kind else []) + (["lora", "peft"] if job.relation == "adapter" else [])
    meta: dict = {"license": rng.choice(LICENSES), "tags": tags, "pipeline_tag": "text-generation"}
    if task:
        meta["datasets"] = [f"zoo-data/{task.name}"]
    if job.relation == "adapter":
        meta["library_name"] = "peft"
    if job.declared:
        meta["base_model"] = [job.parent] if job.base_as_list else job.parent
        meta["base_model_relation"] = CARD_RELATION[job.relation]
    name = job.repo_id.split("/")[1]
    body = {
        None: f"A {job.cfg.num_hidden_layers}-layer decoder-only transformer pretrained from scratch.",
        "finetune": f"A small language model fine-tuned on synthetic `{kind}` sequences.",
        "merged_lora": f"Fine-tuned with LoRA on synthetic `{kind}` sequences, adapter merged into the weights.",
        "adapter": f"A LoRA adapter (r={rank}) for synthetic `{kind}` sequences.",
        "quantized": "The same weights stored in float16.",
    }[job.relation]
    return f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n# {name}\n\n{body}\n"


def write_model_repo(repo: Path, cfg: TinyConfig, tensors: Weights, card: str, shards: int = 1) -> None:
    """config.json, README.md and weights, split into HF-named shards with an index when ``shards > 1``."""
    repo.mkdir(parents=True)
    dtype = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    (repo / "config.json").write_text(json.dumps(cfg.hf_config(dtype), indent=2))
    (repo / "README.md").write_text(card)
    if shards == 1:
        save_file(tensors, repo / "model.safetensors", metadata={"format": "pt"})
        return
    names = list(tensors)
    per_shard = -(-len(names) // shards)
    weight_map = {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s * per_shard : (s + 1) * per_shard]}
        save_file(part, repo / file, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, file)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (repo / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def write_adapter_repo(repo: Path, job: Job, spec: ZooSpec, tensors: Weights, card: str) -> None:
    """A PEFT LoRA repo: adapter_config.json naming the base, adapter_model.safetensors, README.md."""
    repo.mkdir(parents=True)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": job.parent,
        "r": spec.lora_rank,
        "lora_alpha": spec.lora_alpha,
        "lora_dropout": 0.0,
        "target_modules": list(spec.lora_targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    (repo / "adapter_config.json").write_text(json.dumps(config, indent=2))
    (repo / "README.md").write_text(card)
    save_file(tensors, repo / "adapter_model.safetensors", metadata={"format": "pt"})


# ----------------------------------------------------------------------------- build


def build_zoo(
    out: Path, seed: int = 0, scale: int = 1, progress: bool = True, spec: ZooSpec | None = None
) -> ZooTruth:
    """Train the zoo, write ``out/hub``, ``out/hidden`` and ``out/truth.json``; return the truth.

    Args:
        out: folder to write into; its ``hub/`` must not exist yet or be empty.
        seed: same seed gives byte-identical safetensors files; another seed, other weights.
        scale: multiplies families, merged LoRAs and adapters per size (about K times the repos).
        progress: show a tqdm bar over the models made.
        spec: sizes and training settings; ``ZooSpec.tiny()`` for tests.

    Raises:
        FileExistsError: ``out/hub`` already holds files (remove it, or pick another ``out``).
    """
    spec = spec or ZooSpec()
    out = Path(out)
    hub = out / "hub"
    if hub.exists() and any(hub.iterdir()):
        raise FileExistsError(f"{hub} is not empty; remove it or choose another output folder")
    jobs = plan_zoo(spec, seed, scale)
    weights: dict[str | None, Weights] = {}  # full weights of every model made so far
    logs: dict[str, TrainLog | None] = {}
    # One thread fixes the order of every float reduction, so the same seed gives the same
    # bytes on any machine whatever its core count. It is also the fast choice here: the
    # matrices are too small to split, and on a busy 2-core machine two spinning OpenMP
    # threads ran a root's training 6-15x slower than one.
    with intra_op_threads(1):
        for job in tqdm(jobs, desc="zoo", unit="model", disable=not progress):
            tensors, logs[job.repo_id] = _make(job, weights.get(job.parent), spec, seed)
            card = model_card(job, seed, spec.lora_rank)
            if job.relation == "adapter":
                write_adapter_repo(hub / job.repo_id, job, spec, tensors, card)
                continue
            weights[job.repo_id] = tensors
            if job.published:
                write_model_repo(hub / job.repo_id, job.cfg, tensors, card, job.shards)
            else:
                (out / "hidden").mkdir(parents=True, exist_ok=True)
                save_file(tensors, out / hidden_path(job.repo_id), metadata={"format": "pt"})
    truth = _truth(jobs, logs, spec, seed, scale)
    (out / "truth.json").write_text(truth.to_json())
    return truth


def _truth(jobs: list[Job], logs: dict[str, TrainLog | None], spec: ZooSpec, seed: int, scale: int) -> ZooTruth:
    models = {}
    for j in jobs:
        models[j.repo_id] = ModelTruth(
            j.family, j.parent, j.relation, j.depth, j.declared, j.cfg.arch, j.published, logs[j.repo_id]
        )
    edges = [Edge(j.parent, j.repo_id, j.relation, j.declared) for j in jobs if j.parent]
    families: dict[str, list[str]] = {}
    for j in jobs:
        families.setdefault(j.family, []).append(j.repo_id)
    hidden = {j.repo_id: hidden_path(j.repo_id) for j in jobs if not j.published}
    lora = LoraTruth(
        spec.lora_rank,
        spec.lora_alpha,
        list(spec.lora_targets),
        merged=[j.repo_id for j in jobs if j.relation == "merged_lora"],
        adapters={j.repo_id: j.recipe.n_samples for j in jobs if j.relation == "adapter"},
    )
    return ZooTruth(seed, scale, models, edges, families, hidden, lora)
