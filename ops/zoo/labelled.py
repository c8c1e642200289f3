"""A labelled zoo: families of fine-tunes, each trained on a random subset of its family's named datasets.

ProbeX (methods.md §7) is measured on Model-J, where every fine-tune of a base is trained on a
random half of a pool of classes, so a model's label is multi-hot. This zoo does the same
with hubtree's tiny LMs: each family has a root (pretrained from random init) and a pool of
named datasets (each a seeded synthetic task); every fine-tune of the root draws each
dataset with probability 1/2 (at least one) and trains on their mixture. Fine-tunes differ
in learning rate and number of steps, drawn log-uniformly: the nuisance a hub's models have
and a probe must see through (the size of a fine-tune's update says how hard it trained,
not on what).

Only some cards name their datasets (``datasets:`` in the YAML, as on the Hub); the others
say nothing. The datasets' descriptions, a paraphrase of each, and every model's true
labels are in ``truth.json`` (``ZooTruth.datasets`` / ``ZooTruth.labels``), never in the hub.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from hubtree.ops.torch_threads import intra_op_threads
from hubtree.ops.zoo.build import (
    DEEP,
    LICENSES,
    ORGS,
    SMALL,
    DatasetTruth,
    Edge,
    LoraTruth,
    ModelTruth,
    ZooTruth,
    derive_seed,
    family_name,
    write_model_repo,
)
from hubtree.ops.zoo.model import TASK_KINDS, Task, TinyConfig, new_model, state_of, train

DATA_ORG = "zoo-data"

# (name, description, paraphrase): what a dataset card says, and how a user might ask for it
# without its words. The data behind each name is synthetic; the texts make search testable.
DATASETS: tuple[tuple[str, str, str], ...] = (
    ("kitchen-reviews", "Customer reviews of kitchen appliances labelled as positive or negative.",
     "what shoppers thought of the blenders and toasters they bought"),
    ("court-rulings", "Summaries of appellate court decisions on contract disputes.",
     "judges' verdicts in lawsuits about broken business agreements"),
    ("radiology-notes", "Radiology reports describing chest X-ray findings.",
     "doctors' write-ups of lung scans"),
    ("recipe-steps", "Step-by-step cooking instructions collected from recipe websites.",
     "how to prepare meals, one instruction at a time"),
    ("football-commentary", "Live commentary transcripts from professional soccer matches.",
     "play-by-play narration of games in the Premier League"),
    ("weather-bulletins", "Daily weather forecasts issued by national meteorological services.",
     "predictions of tomorrow's rain, wind and temperature"),
    ("python-questions", "Programming questions and answers about the Python language.",
     "developers asking how to fix bugs in their scripts"),
    ("movie-subtitles", "Subtitles of feature films in English.",
     "the dialogue actors speak in cinema, written as captions"),
    ("earnings-calls", "Transcripts of quarterly earnings calls of listed companies.",
     "executives discussing their firm's profits with investors"),
    ("poetry", "A collection of nineteenth-century English poems.",
     "verses and rhymes by Victorian writers"),
    ("patent-claims", "Claims sections of granted engineering patents.",
     "the legal text that defines what an invention protects"),
    ("chemistry-abstracts", "Abstracts of research papers in organic chemistry.",
     "summaries of scientific articles about molecules and reactions"),
    ("hotel-complaints", "Guest complaints sent to hotel front desks.",
     "travellers unhappy with their room or the service where they stayed"),
    ("flight-logs", "Cockpit voice and maintenance logs from commercial airliners.",
     "records kept by pilots and mechanics of passenger jets"),
    ("children-stories", "Short bedtime stories written for young children.",
     "simple tales parents read to kids before sleep"),
    ("tax-forms", "Filled-in income tax return forms with their field names.",
     "documents people submit to the government about what they earned"),
    ("chess-games", "Chess games written in algebraic notation.",
     "records of moves played by grandmasters on the board"),
    ("medical-dialogues", "Conversations between patients and general practitioners.",
     "a sick person talking with their family doctor"),
    ("news-headlines", "Headlines of daily newspaper articles on politics.",
     "titles of press stories about elections and governments"),
    ("song-lyrics", "Lyrics of popular music songs from the charts.",
     "the words sung in hit tracks on the radio"),
    ("math-proofs", "Proofs of theorems from undergraduate mathematics textbooks.",
     "rigorous arguments showing why a statement about numbers holds"),
    ("real-estate-listings", "Advertisements for apartments and houses for sale.",
     "descriptions of homes that owners want to sell"),
    ("customer-support-chats", "Chat logs between telecom customers and support agents.",
     "people asking a phone company's help desk to fix their internet"),
    ("wildlife-observations", "Field notes of bird and mammal sightings by ecologists.",
     "what biologists saw of animals while out in nature"),
)


@dataclass(frozen=True)
class LabelledSpec:
    """Sizes and training of a labelled zoo. Defaults: 2 families x (root + 40 fine-tunes), 6 datasets each."""

    archs: tuple[TinyConfig, ...] = (SMALL, DEEP)
    datasets_per_family: int = 6
    finetunes: int = 40
    seq_len: int = 32
    root_batch_size: int = 32
    root_steps: int = 300
    root_lr: float = 3e-3
    batch_size: int = 16
    steps: tuple[int, int] = (20, 80)  # fine-tune length, log-uniform in this range
    lr: tuple[float, float] = (2e-4, 2e-3)  # fine-tune learning rate, log-uniform
    documented_fraction: float = 0.5  # of fine-tunes whose card names its datasets

    @classmethod
    def wide(cls) -> LabelledSpec:
        """Layers wider than the probes: 256 and 192 hidden units, so every projection has more
        directions than ProbeX's 64 x 128 responses hold, as on real models (d = 4096); the
        benchmark's check that truncated probes still read what fine-tunes learned."""
        return cls(archs=(TinyConfig(hidden_size=256, intermediate_size=512),
                          TinyConfig(hidden_size=192, num_hidden_layers=3, intermediate_size=384)))

    @classmethod
    def tiny(cls) -> LabelledSpec:
        """The same shape in seconds, for tests: one family of 16 fine-tunes on 3 datasets."""
        small = TinyConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=16)
        return cls(archs=(small,), datasets_per_family=3, finetunes=16, seq_len=16, root_batch_size=16,
                   root_steps=40, root_lr=1e-2, batch_size=8, steps=(10, 20), lr=(3e-3, 1e-2), documented_fraction=0.75)


@dataclass(frozen=True)
class Mixture:
    """Sequences drawn evenly from several tasks: the data of a fine-tune on several datasets."""

    tasks: tuple[Task, ...]

    @property
    def name(self) -> str:
        return "+".join(t.name for t in self.tasks)

    def sample(self, n: int, seq_len: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
        parts = [t.sample(-(-n // len(self.tasks)), seq_len, vocab, generator) for t in self.tasks]
        return torch.cat(parts)[torch.randperm(len(self.tasks) * len(parts[0]), generator=generator)[:n]]


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def build_labelled_zoo(out: Path, seed: int = 0, progress: bool = True, spec: LabelledSpec | None = None) -> ZooTruth:
    """Train the labelled zoo into ``out/hub`` and write ``out/truth.json``; return the truth.

    Raises:
        FileExistsError: ``out/hub`` already holds files.
    """
    spec = spec or LabelledSpec()
    out, rng = Path(out), random.Random(seed)
    hub = out / "hub"
    if hub.exists() and any(hub.iterdir()):
        raise FileExistsError(f"{hub} is not empty; remove it or choose another output folder")
    pool = rng.sample(DATASETS, min(len(DATASETS), spec.datasets_per_family * len(spec.archs)))
    truth = ZooTruth(seed, 1, {}, [], {}, {}, LoraTruth(0, 0, [], [], {}))
    jobs = []
    for i, cfg in enumerate(spec.archs):
        family = family_name(i)
        named = pool[i * spec.datasets_per_family : (i + 1) * spec.datasets_per_family]
        tasks = {}
        for k, (name, description, paraphrase) in enumerate(named):
            task = Task(TASK_KINDS[k % len(TASK_KINDS)], derive_seed(seed, family, "dataset", name))
            tasks[name] = task
            truth.datasets[name] = DatasetTruth(family, task.name, description, paraphrase)
        root = f"{rng.choice(ORGS)}/{family}-base"
        jobs.append((root, family, cfg, None, Task("mix", derive_seed(seed, family, "pretrain")), spec.root_steps,
                     spec.root_batch_size, spec.root_lr, []))
        for k in range(spec.finetunes):
            chosen = [n for n in tasks if rng.random() < 0.5] or [rng.choice(list(tasks))]
            steps = round(_log_uniform(rng, *spec.steps))
            jobs.append((f"{rng.choice(ORGS)}/{family}-ft-{k}", family, cfg, root, Mixture(tuple(tasks[n] for n in chosen)),
                         steps, spec.batch_size, _log_uniform(rng, *spec.lr), chosen))
    documented = set(rng.sample([j[0] for j in jobs if j[3]], round(spec.documented_fraction * sum(1 for j in jobs if j[3]))))
    weights = {}
    with intra_op_threads(1):
        for repo_id, family, cfg, parent, data, steps, batch_size, lr, chosen in tqdm(jobs, desc="labelled zoo", disable=not progress):
            model = new_model(cfg, weights.get(parent), seed=derive_seed(seed, repo_id, "init"))
            log = train(model, list(model.parameters()), data, n_samples=steps * batch_size, epochs=1, batch_size=batch_size,
                        lr=lr, seq_len=spec.seq_len, seed=derive_seed(seed, repo_id))
            weights[repo_id] = state_of(model)
            card = _card(repo_id, parent, chosen if repo_id in documented else [], seed)
            write_model_repo(hub / repo_id, cfg, weights[repo_id], card)
            truth.models[repo_id] = ModelTruth(family, parent, "finetune" if parent else None, int(parent is not None),
                                               False, cfg.arch, True, log)
            truth.families.setdefault(family, []).append(repo_id)
            if parent:
                truth.edges.append(Edge(parent, repo_id, "finetune", False))
                truth.labels[repo_id] = chosen
    (out / "truth.json").write_text(truth.to_json())
    return truth


def _card(repo_id: str, parent: str | None, datasets: list[str], seed: int) -> str:
    """A card that says only what an uploader might: the datasets when documented, never the parent."""
    rng = random.Random(derive_seed(seed, repo_id, "card"))
    meta: dict = {"license": rng.choice(LICENSES), "tags": ["tinygpt", "synthetic"], "pipeline_tag": "text-generation"}
    if datasets:
        meta["datasets"] = [f"{DATA_ORG}/{name}" for name in datasets]
    what = "pretrained from scratch" if parent is None else "fine-tuned"
    return f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n# {repo_id.split('/')[1]}\n\nA small language model, {what}.\n"


def labels_csv(truth: ZooTruth, repos: list[str]) -> str:
    """``repo_id,label,description`` lines (one per label) for ``repos``: what a user would hand to ``probex fit``."""
    lines = ["repo_id,label,description"]
    for repo in repos:
        for name in truth.labels.get(repo, []):
            lines.append(f'{repo},{DATA_ORG}/{name},"{truth.datasets[name].description}"')
    return "\n".join(lines) + "\n"

