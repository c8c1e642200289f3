"""LoRA attack sets from a lake's rows: group full-weight repos by declared parent, check each group, cut it into detuning units.

A group is every full-weight repo that declares one parent (the parent may be absent from
the hub, like an unpublished base), cut down to the most common architecture among them;
repos that declare no parent join when they differ from the group's reference member at
low rank in every candidate layer (a LoRA merge whose card says nothing). ``check_group``
asks ``check_attack_set`` which members are LoRA merges of one base, which layers were
targeted and at what rank; ``detune_units`` batches same-shape layers of one rank for
``spectral_detuning_batch`` (``detune``). Weights come through a ``read`` callable, so
these functions do no I/O of their own; ``ProbeCache`` keeps the one layer each undeclared
candidate is first tested on, so the groups a worker checks read it once.
"""
from __future__ import annotations

import re
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch

from hubtree.errors import HubtreeError
from hubtree.ops.lora.attack_sets import MIN_MERGES, SAMPLE_ROWS, AttackSet, check_attack_set
from hubtree.ops.lora.spectral_detuning import spectral_detuning_batch, w_error
from hubtree.ops.weights.row_sample import RowSample, sample_rows
from hubtree.ops.weights.safetensors_reader import FLOAT_STORAGE

MAX_CANDIDATES = 64  # undeclared repos tried per group (each costs one pairwise rank test per layer)
PROBE_CACHE_BYTES = 512 * 1024 * 1024  # a worker's probe layers kept (float32): 64 candidates' q_proj samples of a 7B take 277 MB
UNIT_BYTES = 256 * 1024 * 1024  # float64 stack of one detuning unit: (L, n, m, d) * 8 bytes


@dataclass(frozen=True)
class RepoLoc:
    """Where one repo revision's layers are: ``files`` maps layer name -> file in the repo."""

    repo_id: str
    revision: str
    hub: str
    files: dict[str, str]
    dtypes: dict[str, str]


# The named layers of a repo as float32: whole, or only the rows a RowSample names where the mapping has one.
Read = Callable[[RepoLoc, list[str], Mapping[str, RowSample]], dict[str, torch.Tensor]]


@dataclass
class GroupPlan:
    """One declared parent: its declaring members, undeclared candidates, and the candidate layers."""

    base_repo: str
    members: list[RepoLoc]
    candidates: list[RepoLoc]
    layers: list[str]
    shapes: dict[str, tuple]  # layer -> (m, d)
    base: RepoLoc | None  # the base itself, when it is in the lake (for W-Error)
    excluded: dict[str, str] = field(default_factory=dict)  # declaring repo left out -> why


@dataclass
class GroupCheck:
    plan: GroupPlan
    members: list[RepoLoc] = field(default_factory=list)
    layers: dict[str, int] = field(default_factory=dict)  # targeted layer -> rank
    problem: str | None = None  # None: ready to detune
    failed: bool = False  # a member could not be read (``problem`` says why): a failed unit, not a finding


@dataclass
class DetuneUnit:
    base_repo: str
    layers: list[str]
    rank: int
    members: list[RepoLoc]
    base: RepoLoc | None
    iterations: int


@dataclass
class LayerResult:
    base_repo: str
    layer: str
    rank: int
    iterations: int
    final_loss: float
    w_error: float | None
    weights: torch.Tensor
    error: str | None = None


def storage_eps(locs: Sequence[RepoLoc], names: Sequence[str]) -> float:
    """The coarsest storage rounding among the layers read (they are upcast to float32)."""
    return max(torch.finfo(FLOAT_STORAGE.get(loc.dtypes[n], torch.float32)).eps for loc in locs for n in names)


# ----------------------------------------------------------------------------- plan


def plan_groups(repos: Sequence[Mapping], tensors: Sequence[Mapping], edges: Sequence[Mapping], layers: str | None) -> list[GroupPlan]:
    """Attack-set candidates: full-weight repos grouped by declared parent.

    ``repos``: rows (repo_id, revision, hub) of the full-weight, non-adapter repos;
    ``tensors``: rows (repo_id, revision, file, name, shape, dtype) of their 2-D floating
    tensors; ``edges``: declared edges (repo_id, parent_repo_id, relation); ``layers``: a
    regex on tensor names.
    """
    locs, shapes = _locations(repos, tensors, layers)
    parents: dict[str, set[str]] = defaultdict(set)
    declares = set()
    for e in edges:
        declares.add(e["repo_id"])
        if e["repo_id"] in locs and e["relation"] not in ("adapter", "quantized") and e["parent_repo_id"] != e["repo_id"]:
            parents[e["parent_repo_id"]].add(e["repo_id"])
    undeclared = [r for r in sorted(locs) if r not in declares]
    plans = []
    for base_repo, children in sorted(parents.items()):
        members, excluded = one_architecture(sorted(children), shapes)
        common = set(shapes[members[0]].items())
        for m in members[1:]:
            common &= set(shapes[m].items())
        names = sorted(n for n, _ in common)
        sig = {n: s for n, s in common}
        candidates = [
            locs[c] for c in undeclared
            if c != base_repo and names and all(shapes[c].get(n) == s for n, s in sig.items())
        ][:MAX_CANDIDATES]
        base = locs.get(base_repo)
        if base and not all(shapes[base_repo].get(n) == s for n, s in sig.items()):
            base = None
        plans.append(GroupPlan(base_repo, [locs[m] for m in members], candidates, names, sig, base, excluded))
    return plans


def _locations(
    repos: Sequence[Mapping], tensors: Sequence[Mapping], layers: str | None
) -> tuple[dict[str, RepoLoc], dict[str, dict[str, tuple]]]:
    """Each repo's wanted layers (at its listed revision, names matching ``layers``): where they are, and their shapes."""
    pattern = re.compile(layers) if layers else None
    info = {r["repo_id"]: r for r in repos}
    per_repo: dict[str, list[Mapping]] = defaultdict(list)
    for t in tensors:
        if t["repo_id"] in info and t["revision"] == info[t["repo_id"]]["revision"] and (not pattern or pattern.search(t["name"])):
            per_repo[t["repo_id"]].append(t)
    locs, shapes = {}, {}
    for repo_id, rows in per_repo.items():
        r = info[repo_id]
        locs[repo_id] = RepoLoc(repo_id, r["revision"], r["hub"], {t["name"]: t["file"] for t in rows}, {t["name"]: t["dtype"] for t in rows})
        shapes[repo_id] = {t["name"]: tuple(t["shape"]) for t in rows}
    return locs, shapes


def one_architecture(children: list[str], shapes: Mapping[str, Mapping[str, tuple]]) -> tuple[list[str], dict[str, str]]:
    """The declaring repos that have every layer of the most common architecture among them, and the rest with why.

    One model of another architecture that names the same base (a card's mistake, or a
    distillation) must not empty the layers the others share; it is left out, and said so.
    Ties go to the architecture with more layers, then to the first repo's in id order.
    """
    counts = Counter(frozenset(shapes[c].items()) for c in children)
    layout = max(counts, key=lambda sig: (counts[sig], len(sig)))
    keep = [c for c in children if layout <= set(shapes[c].items())]
    why = "has other tensor names or shapes than the other models declaring this base"
    return keep, {c: why for c in children if c not in keep}


# ----------------------------------------------------------------------------- check and detune


def check_group(plan: GroupPlan, read: Read, probes: ProbeCache | None = None) -> GroupCheck:
    """Which declared members and undeclared candidates are LoRA merges of one base, and where.

    The declared members are checked together (their reference is the first member the
    check keeps); each candidate is then paired with that reference and joins when the pair
    differs at low rank in every layer and is not a copy (``_joins``); the whole set is
    checked once more. Every model is read at the same ``SAMPLE_ROWS`` rows of each layer,
    which settle the ranks (``attack_sets.classify_layers``): only the layers detuned later
    are read whole. A candidate is read at one layer first (``probe_layer``), through
    ``probes`` where given, and at the others only if that layer does not rule it out.
    """
    out = GroupCheck(plan)
    names = plan.layers
    if not names:
        out.problem = "low: the members share no 2-D floating tensor of one shape"
        return out
    rows = {name: sample_rows(name, plan.shapes[name], SAMPLE_ROWS) for name in names}
    check = partial(check_attack_set, shapes=plan.shapes)
    try:
        weights = {loc.repo_id: read(loc, names, rows) for loc in plan.members}
        declared = [loc.repo_id for loc in plan.members]
        eps = storage_eps(plan.members, names)
        ref, targeted = declared[0], {}
        if len(declared) >= 2:
            found = check(weights, eps=eps)
            ref, targeted = found.members[0], found.layers
        probe = probe_layer(plan, targeted)
        first_read = partial(probes.read, read) if probes else read
        joined = []
        for cand in plan.candidates:
            pair = partial(check, eps=max(eps, storage_eps([cand], names)))
            w = _joins(ref, weights[ref], cand, probe, rows, first_read, read, pair)
            if w is not None:
                weights[cand.repo_id] = w
                joined.append(cand)
        locs = {loc.repo_id: loc for loc in [*plan.members, *joined]}
        if len(weights) < 2:
            out.members = list(locs.values())
            out.problem = (
                f"low: only 1 full-weight model ({ref}) declares {plan.base_repo} as its parent and no undeclared "
                f"model differs from it at low rank; Spectral DeTuning needs at least {MIN_MERGES} LoRA merges of one base"
            )
            return out
        found = check(weights, eps=storage_eps(list(locs.values()), names))
    except HubtreeError as err:
        out.problem, out.failed = f"failed: {type(err).__name__}: {err}", True
        return out
    out.members = [locs[m] for m in found.members]
    out.layers = dict(found.layers)
    reasons = list(found.problems)
    if found.excluded:
        reasons.append("excluded: " + "; ".join(f"{m} {why}" for m, why in found.excluded.items() if m in declared))
    if found.problems:
        out.problem = "low: " + " ".join(reasons)
    return out


def probe_layer(plan: GroupPlan, targeted: Mapping[str, int]) -> str:
    """The layer a candidate is tested on first: the smallest sample of a ``targeted`` layer, or of any layer.

    A candidate joins only if it differs from the reference at low rank in *every* layer, so
    one layer at full rank rules it out, and a model of another base (most candidates: on
    the Hub they are the undeclared models of one architecture) differs at full rank in
    every layer it was trained in. The layers the declared members' LoRA targeted are where
    a same-base model that is no low-rank merge shows it too (a high-rank or full fine-tune
    of the same matrices). Without them (one declared member, or members that are copies or
    of other bases) the smallest layer decides as well, and it is the same one for every
    group of this architecture, so ``ProbeCache`` serves it to all of them (ties go to the
    first name, for the same reason). Testing one layer and then the rest, not all at once,
    costs a joining candidate one more request and saves a ruled-out one all its other layers.
    """
    pool = sorted(targeted) or plan.layers
    return min(pool, key=lambda name: (min(plan.shapes[name][0], SAMPLE_ROWS) * plan.shapes[name][1], name))


def _joins(
    ref_id: str, ref: Mapping[str, torch.Tensor], cand: RepoLoc, probe: str, rows: Mapping[str, RowSample],
    first_read: Read, read: Read, check: Callable[..., AttackSet],
) -> dict[str, torch.Tensor] | None:
    """Candidate ``cand``'s sampled layers if it is a LoRA merge of reference ``ref_id``'s base, else None.

    The pair joins when ``check`` keeps both (every layer at rank <= ``low_rank_limit``) and
    finds a targeted layer (not a copy). A full-rank ``probe`` layer already fails the first
    condition, so the candidate's other layers are read only when the probe does not rule it
    out, and the verdict is the one a check on all layers gives.
    """
    first = first_read(cand, [probe], rows)
    if len(check({ref_id: {probe: ref[probe]}, cand.repo_id: first}).members) < 2:
        return None
    rest = read(cand, [name for name in ref if name != probe], rows)
    w = {name: first[name] if name == probe else rest[name] for name in ref}
    pair = check({ref_id: ref, cand.repo_id: w})
    return w if len(pair.members) == 2 and pair.layers else None


class ProbeCache:
    """Candidates' probe layers this worker has read, by (hub, repo_id, revision, layer, rows), within ``max_bytes``.

    Groups of one architecture try the same undeclared candidates (the first ``MAX_CANDIDATES``
    in id order), mostly at the same probe layer (``probe_layer``), so without it a run reads
    each candidate once per group; with it, about once per worker. Only probe layers are kept
    (one small sample per candidate, not whole models), the least recently used leaving first.
    A cache per worker, rather than one task per architecture, keeps every group its own Ray
    task, so a big architecture's groups still spread over the pool.
    """

    def __init__(self, max_bytes: int = PROBE_CACHE_BYTES):
        self.max_bytes, self.bytes = max_bytes, 0
        self._layers: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def read(self, read: Read, loc: RepoLoc, names: list[str], rows: Mapping[str, RowSample]) -> dict[str, torch.Tensor]:
        keys = {name: (loc.hub, loc.repo_id, loc.revision, name, rows.get(name)) for name in names}
        missing = [name for name, key in keys.items() if key not in self._layers]
        got = read(loc, missing, rows) if missing else {}
        for name in missing:
            self._layers[keys[name]] = got[name]
            self.bytes += got[name].nbytes
        out = {}
        for name, key in keys.items():
            self._layers.move_to_end(key)
            out[name] = self._layers[key]
        while self.bytes > self.max_bytes and len(self._layers) > 1:
            self.bytes -= self._layers.popitem(last=False)[1].nbytes
        return out


def detune_units(check: GroupCheck, iterations: int) -> list[DetuneUnit]:
    """Targeted layers of one checked group, same shape and rank batched (each unit within ``UNIT_BYTES``)."""
    groups: dict[tuple, list[str]] = defaultdict(list)
    for name, rank in sorted(check.layers.items()):
        groups[(rank, check.plan.shapes[name])].append(name)
    units = []
    for (rank, (m, d)), names in groups.items():
        per = max(1, UNIT_BYTES // (8 * m * d * len(check.members)))
        for start in range(0, len(names), per):
            units.append(DetuneUnit(check.plan.base_repo, names[start : start + per], rank, check.members, check.plan.base, iterations))
    return units


def detune(unit: DetuneUnit, read: Read, device: torch.device) -> list[LayerResult]:
    """Spectral DeTuning of same-shape layers of one rank, in one batch; W-Error where the base is readable."""
    try:
        per_member = [read(loc, unit.layers, {}) for loc in unit.members]
        stack = torch.stack([torch.stack([m[name] for m in per_member]) for name in unit.layers]).to(device)
        results = spectral_detuning_batch(stack, unit.rank, unit.iterations)
        truth = read(unit.base, unit.layers, {}) if unit.base else {}
    except HubtreeError as err:
        return [LayerResult(unit.base_repo, name, unit.rank, 0, float("nan"), None, torch.empty(0), f"{type(err).__name__}: {err}")
                for name in unit.layers]
    out = []
    for name, res in zip(unit.layers, results):
        weights = res.weights.cpu()
        err = w_error(weights, truth[name]) if name in truth else None
        out.append(LayerResult(unit.base_repo, name, unit.rank, res.iterations, res.loss_history[-1], err, weights))
    return out
