"""The ProbeX flows: fit one expert per family on the labelled models, label every model, search by text.

``probex_fit_flow`` takes labels from a CSV (``repo_id,label[,description]``) or from the
cards in the lake, groups the labelled models by the ``families`` of the latest trees run,
and for each family with enough labelled members reads the candidate layers of those
members (by range, on the stats stage's Ray actors), picks the layer on a validation split
and fits the expert (``ops.weights.probex``). Every expert, its layer and the labels it was
fitted on go into one file through the lake (``blobs``, kind ``probex``), as the DSiRe models do.
A family with too few labelled members gets no expert, and the summary says why.

``probex_predict_flow`` reads only each expert's layer of every member of its family, turns
it into the probe responses on the actors, and writes ``model_labels`` (a score per label) and
``probex_embeddings`` (the text-aligned representation). ``search_lake`` ranks the lake's
models by a query with ``ops.text.search``.
"""
from __future__ import annotations

import io
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import lru_cache, partial

import numpy as np
import pyarrow as pa
import ray
import torch
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from hubtree.errors import HubtreeError, LakeError
from hubtree.lake import Lake
from hubtree.ops.hub.card_labels import Label, card_labels, label_text, read_labels_csv
from hubtree.ops.text.encoder import text_encoder
from hubtree.ops.text.search import Hit, rank
from hubtree.ops.weights.probex import ProbexExpert, ProbexSettings, fit_expert
from hubtree.ops.weights.safetensors_reader import FLOAT_DTYPES
from hubtree.pipelines.ray_runtime import WorkerPool, actor_options, actor_pool
from hubtree.pipelines.run_log import begin_run, record_run, traffic_columns
from hubtree.pipelines.stats import ModelUnit, StatsSettings, StatsWorker

MIN_LABELLED = 8  # labelled members a family needs for an expert (6 to train, 2 to choose the layer)
MAX_LAYERS = 12  # candidate layers tried per family, spread over the model's depth


@dataclass
class FamilyPlan:
    """One family: its members (repo -> revision, hub), their labels, and the layers it could read."""

    family_id: int
    members: dict[str, tuple[str, str]]
    labelled: list[str]
    root: str | None = None  # the family's tree root (its base), when it has weights in the lake
    layers: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)  # name -> (file, shape)
    problem: str | None = None


# ----------------------------------------------------------------------------- labels and plan


def lake_labels(lake: Lake) -> list[Label]:
    """Labels from the cards of the lake's latest revisions that name their ``datasets``."""
    rows = lake.query("SELECT repo_id, card_metadata, pipeline_tag FROM repos ORDER BY repo_id").to_pylist()
    return [label for r in rows for label in card_labels(r["repo_id"], r["card_metadata"], r["pipeline_tag"])]


@task(cache_policy=NONE)
def plan_families(lake: Lake, labels: list[Label], layers: str | None, min_labelled: int, max_layers: int) -> list[FamilyPlan]:
    """Each family of the latest trees run with its labelled members and the 2-D layers they all share."""
    members = lake.query(
        """SELECT f.family_id, f.repo_id, r.revision, r.hub FROM families f JOIN repos r USING (repo_id)
           WHERE f.family_id >= 0 ORDER BY f.family_id, f.repo_id"""
    ).to_pylist()
    if not members:
        raise LakeError(f"no families in {lake.url}: run `hubtree stats --lake {lake.url}` and `hubtree trees --lake {lake.url}` first")
    labelled = {label.repo_id for label in labels}
    plans: dict[int, FamilyPlan] = {}
    for m in members:
        plan = plans.setdefault(m["family_id"], FamilyPlan(m["family_id"], {}, []))
        plan.members[m["repo_id"]] = (m["revision"], m["hub"])
        if m["repo_id"] in labelled:
            plan.labelled.append(m["repo_id"])
    for r in lake.query("SELECT family_id, child_repo_id FROM tree_edges WHERE source = 'root' AND family_id >= 0").to_pylist():
        if r["family_id"] in plans and r["child_repo_id"] in plans[r["family_id"]].members:
            plans[r["family_id"]].root = r["child_repo_id"]
    tensors = lake.query(
        f"""SELECT t.repo_id, t.file, t.name, t.shape FROM tensors t SEMI JOIN families f ON t.repo_id = f.repo_id
            WHERE len(t.shape) = 2 AND t.dtype IN {FLOAT_DTYPES} ORDER BY t.repo_id, t.file, t.data_begin"""
    ).to_pylist()
    by_repo: dict[str, dict[str, tuple[str, tuple[int, ...]]]] = defaultdict(dict)
    pattern = re.compile(layers) if layers else None
    for t in tensors:
        if not pattern or pattern.search(t["name"]):
            by_repo[t["repo_id"]][t["name"]] = (t["file"], tuple(t["shape"]))
    for plan in plans.values():
        n = len(plan.labelled)
        if n < min_labelled:
            plan.problem = f"{n} labelled member(s) of {len(plan.members)}; an expert needs at least {min_labelled}"
            continue
        first = by_repo[plan.labelled[0]]
        shared = [name for name, (_, shape) in first.items() if all(by_repo[r].get(name, (None, None))[1] == shape for r in plan.labelled)]
        if not shared:
            plan.problem = "its labelled members share no 2-D floating tensor of one name and shape"
            continue
        k = min(max_layers, len(shared))
        picks = sorted({round(i * (len(shared) - 1) / max(1, k - 1)) for i in range(k)})
        plan.layers = {shared[i]: first[shared[i]] for i in picks}
        if plan.root and any(by_repo[plan.root].get(n, (None, None))[1] != first[n][1] for n in plan.layers):
            plan.root = None  # a root of another shape cannot centre these layers: the members' mean will
    return sorted(plans.values(), key=lambda p: p.family_id)


def _unit(repo_id: str, revision: str, hub: str, layers: dict[str, tuple[str, tuple[int, ...]]]) -> ModelUnit:
    files: dict[str, list[str]] = defaultdict(list)
    for name, (file, shape) in layers.items():
        files[file].append(name)
    return ModelUnit(repo_id, revision, hub, dict(files), sum(4 * int(np.prod(s)) for _, s in layers.values()))


def _read(pool: WorkerPool, units: list[ModelUnit], fn) -> tuple[dict[str, object], dict[str, str]]:
    """``fn`` of each unit's tensors, computed on the actors: (repo -> result, repo -> error)."""
    out, errors = {}, {}
    for unit, result, error in pool.map_unordered(lambda actor, u: actor.map_tensors.remote(u, fn), units):
        if error:
            errors[unit.repo_id] = error
        else:
            out[unit.repo_id] = result
    return out, errors


def _stack(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.to(torch.float32) for name, t in tensors.items()}


@lru_cache(maxsize=4)
def _expert(arrays: ray.ObjectRef, prefix: str) -> ProbexExpert:
    """The expert behind an object-store reference, fetched and built once per worker process."""
    return ProbexExpert.from_arrays(ray.get(arrays), prefix)


def _responses(arrays: ray.ObjectRef, prefix: str, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    expert = _expert(arrays, prefix)
    return expert.responses(tensors[expert.layer][None])[0]


# ----------------------------------------------------------------------------- fit


@flow(name="hubtree-probex-fit", log_prints=True)
def probex_fit_flow(lake: str, labels_csv: str | None = None, hub: str | None = None, layers: str | None = None,
                    min_labelled: int = MIN_LABELLED, max_layers: int = MAX_LAYERS, epochs: int = ProbexSettings.epochs,
                    ray_address: str | None = None) -> dict:
    """Fit a ProbeX expert for every family of ``lake`` with at least ``min_labelled`` labelled members.

    Labels come from ``labels_csv`` (``repo_id,label[,description]``) or, without it, from the
    cards in the lake that name their ``datasets``. ``layers`` is a regex on tensor names.
    """
    logger = get_run_logger()
    params = {"lake": lake, "labels_csv": labels_csv, "hub": hub, "layers": layers, "min_labelled": min_labelled,
              "max_layers": max_layers, "epochs": epochs, "ray_address": ray_address}
    the_lake, run_id, started = begin_run(lake, "probex-fit", params)
    labels = read_labels_csv(labels_csv) if labels_csv else lake_labels(the_lake)
    if not labels:
        raise HubtreeError(f"no labels: no card in {the_lake.url} names its datasets; give --labels FILE (repo_id,label[,description])")
    in_lake = {r["repo_id"] for r in the_lake.query("SELECT repo_id FROM repos").to_pylist()}
    missing = sorted({label.repo_id for label in labels} - in_lake)
    if len(missing) == len({label.repo_id for label in labels}):
        raise LakeError(f"none of the {len(missing)} labelled repos is in {the_lake.url} (first: {missing[0]}): crawl them first")
    if missing:
        logger.info("%d labelled repos are not in the lake and are left out (first: %s)", len(missing), missing[0])
    plans = plan_families(the_lake, labels, layers, min_labelled, max_layers)
    summary = {"run_id": run_id, "status": "completed", "model_id": None, "experts": {}, "skipped": {}}
    for plan in plans:
        if plan.problem and plan.labelled:
            summary["skipped"][plan.family_id] = plan.problem
            logger.info("family %d: no expert: %s", plan.family_id, plan.problem)
    ready = [p for p in plans if not p.problem]
    settings = ProbexSettings(epochs=epochs)
    arrays: dict[str, np.ndarray] = {}
    seconds = {"read": 0.0, "fit": 0.0}
    traffic: Counter = Counter()
    if ready:
        by_repo: dict[str, list[Label]] = defaultdict(list)
        for label in labels:
            by_repo[label.repo_id].append(label)
        descriptions = {label.label: label.description for label in labels if label.description}
        with actor_pool(_worker(hub), sum(len(p.labelled) for p in ready), ray_address) as pool:
            for plan in ready:
                fitted, outcome = _fit_family(pool, plan, by_repo, descriptions, settings, min_labelled, seconds)
                if fitted is None:
                    summary["skipped"][plan.family_id] = outcome["why"]
                    logger.info("family %d: no expert: %s", plan.family_id, outcome["why"])
                    continue
                arrays |= fitted
                summary["experts"][plan.family_id] = outcome
                logger.info("family %d: expert on %s (cross-validated accuracy %.3f over %d layers), %d labels, %d members",
                            plan.family_id, outcome["layer"], outcome["val_accuracy"], len(outcome["layers_tried"]),
                            outcome["labels"], outcome["members"])
            traffic = pool.traffic()
    summary["bytes_fetched"] = traffic["bytes"]
    if summary["experts"]:
        model_id = f"{started.strftime('%Y%m%dT%H%M%S')}-{run_id[:8]}"
        known = [[l.repo_id, l.label, l.description or ""] for l in labels if l.repo_id in in_lake]
        arrays |= {"families": np.array(sorted(summary["experts"]), dtype=np.int64), "known": np.array(known).reshape(-1, 3)}
        summary["model_id"] = model_id
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        blob = the_lake.write_blob("probex", model_id, run_id, buf.getvalue(), ".npz")
        the_lake.commit("probex-fit", run_id, {"blobs": [blob]}, day=started.date())
        summary["path"] = blob["path"]
    summary["seconds"] = seconds
    record_run(the_lake, "probex-fit", run_id, params, started, "completed",
               {"repos_crawled": sum(e["members"] for e in summary["experts"].values()), **traffic_columns(traffic)})
    return summary


def _fit_family(pool: WorkerPool, plan: FamilyPlan, by_repo: dict[str, list[Label]], descriptions: dict[str, str],
                settings: ProbexSettings, min_labelled: int, seconds: dict) -> tuple[dict[str, np.ndarray] | None, dict]:
    """Read one family's candidate layers (labelled members and root) and fit its expert.

    Returns (the expert's arrays, what to report), or (None, {"why": ...}) when it cannot have one.
    """
    tic = time.perf_counter()
    wanted = plan.labelled + ([plan.root] if plan.root and plan.root not in plan.labelled else [])
    read, errors = _read(pool, [_unit(r, *plan.members[r], plan.layers) for r in wanted], _stack)
    base = read.pop(plan.root, None) if plan.root not in plan.labelled else read.get(plan.root)
    seconds["read"] += time.perf_counter() - tic
    if errors:
        get_run_logger().info("family %d: %d labelled members unreadable (first: %s: %s)", plan.family_id, len(errors), *next(iter(errors.items())))
    repos = sorted(read)
    has = {r: {l.label for l in by_repo[r]} for r in repos}
    # A label every labelled member has (or lacks but one) cannot be learned or checked: left out.
    names = sorted(n for n in set().union(*has.values()) if 2 <= sum(n in has[r] for r in repos) <= len(repos) - 2) if repos else []
    if len(repos) < min_labelled:
        return None, {"why": f"{len(repos)} readable labelled members; an expert needs at least {min_labelled}"}
    if not names:
        return None, {"why": "no label is both present and absent in 2+ labelled members"}
    tic = time.perf_counter()
    y = torch.tensor([[float(n in has[r]) for n in names] for r in repos])
    texts = [label_text(n, descriptions.get(n)) for n in names]
    layer_stack = {name: torch.stack([read[r][name] for r in repos]) for name in plan.layers}
    expert, scores = fit_expert(layer_stack, y, names, texts, text_encoder().embed(texts), base, settings)
    seconds["fit"] += time.perf_counter() - tic
    prefix = f"family{plan.family_id}/"
    arrays = expert.to_arrays(prefix) | {f"{prefix}train_repos": np.array(repos)}
    return arrays, {"layer": expert.layer, "base": plan.root if base else None, "val_accuracy": expert.val_accuracy,
                    "labels": len(names), "members": len(repos), "layers_tried": scores}


def _worker(hub: str | None):
    """How ``actor_pool`` makes one reader: the stats stage's actor (it reads tensors by range)."""
    return lambda n: StatsWorker.options(**actor_options()).remote(StatsSettings(), hub)


@dataclass
class ProbexModel:
    """A stored fit: its experts by family, their training repos, and the labels it was given."""

    model_id: str
    arrays: dict[str, np.ndarray]
    experts: dict[int, ProbexExpert]
    train: dict[int, list[str]]
    known: list[Label]


def load_probex_model(lake: Lake, model_id: str | None = None) -> ProbexModel:
    """``model_id`` or the latest fit in the lake."""
    model_id, data = lake.read_latest_blob("probex", model_id, "ProbeX model", f"hubtree probex fit --lake {lake.url}")
    arrays = dict(np.load(io.BytesIO(data), allow_pickle=False))
    families = [int(f) for f in arrays["families"]]
    if any(f"family{f}/head/weight" not in arrays for f in families):
        raise LakeError(f"ProbeX model {model_id} was fitted by an older hubtree (before the principal probes): "
                        f"run `hubtree probex fit --lake {lake.url}` again")
    experts = {f: ProbexExpert.from_arrays(arrays, f"family{f}/") for f in families}
    train = {f: [str(r) for r in arrays[f"family{f}/train_repos"]] for f in families}
    known = [Label(str(r), str(l), str(d) or None) for r, l, d in arrays["known"]]
    return ProbexModel(model_id, arrays, experts, train, known)


# ----------------------------------------------------------------------------- predict


@flow(name="hubtree-probex-predict", log_prints=True)
def probex_predict_flow(lake: str, model: str | None = None, hub: str | None = None, ray_address: str | None = None) -> dict:
    """Score every model of each family with an expert on the family's labels (``model_labels``)
    and place it in the text space (``probex_embeddings``). Reads only the expert's layer of each model."""
    logger = get_run_logger()
    params = {"lake": lake, "model": model, "hub": hub, "ray_address": ray_address}
    the_lake = Lake(lake)
    the_lake.require()
    fitted = load_probex_model(the_lake, model)
    the_lake, run_id, started = begin_run(lake, "probex", params)
    members = the_lake.query(
        """SELECT f.family_id, f.repo_id, r.revision, r.hub, t.file, t.name, t.shape FROM families f
           JOIN repos r USING (repo_id) JOIN tensors t ON t.repo_id = r.repo_id AND t.revision = r.revision
           WHERE f.family_id >= 0 AND len(t.shape) = 2"""
    ).to_pylist()
    by_family: dict[int, dict[str, dict]] = defaultdict(dict)
    for m in members:
        by_family[m["family_id"]].setdefault(m["repo_id"], {"revision": m["revision"], "hub": m["hub"], "layers": {}})["layers"][m["name"]] = (m["file"], tuple(m["shape"]))
    labels_rows, embedding_rows, skipped = [], [], []
    seconds = {"read": 0.0, "predict": 0.0}
    with actor_pool(_worker(hub), sum(len(v) for v in by_family.values()), ray_address) as pool:
        for fit_family, expert in sorted(fitted.experts.items()):
            _predict_family(pool, fitted, fit_family, expert, by_family, labels_rows, embedding_rows, skipped, seconds)
        traffic = pool.traffic()
    the_lake.commit("probex", run_id, {"model_labels": labels_rows, "probex_embeddings": embedding_rows}, day=started.date())
    record_run(the_lake, "probex", run_id, params, started, "completed",
               {"repos_crawled": len(embedding_rows), "repos_skipped": len(skipped), **traffic_columns(traffic)})
    if skipped:
        logger.info("%d models skipped: the expert's layer is missing, of another shape, or unreadable (first: %s)", len(skipped), skipped[0])
    return {"run_id": run_id, "status": "completed", "model_id": fitted.model_id, "models": len(embedding_rows),
            "labels": len(labels_rows), "skipped": skipped, "seconds": seconds, "bytes_fetched": traffic["bytes"]}


def _predict_family(pool: WorkerPool, fitted: ProbexModel, fit_family: int, expert: ProbexExpert, by_family: dict,
                    labels_rows: list, embedding_rows: list, skipped: list, seconds: dict) -> None:
    """Read the expert's layer of every member of its family, score and embed them (into the row lists)."""
    logger = get_run_logger()
    # Family ids are renumbered by each trees run: the expert's family is where its training models are now.
    homes = Counter(f for f, repos in by_family.items() for r in fitted.train[fit_family] if r in repos)
    if not homes:
        logger.info("expert of family %d: none of its training models is in a family now; skipped", fit_family)
        return
    family_id = homes.most_common(1)[0][0]
    units = []
    for repo_id, m in sorted(by_family[family_id].items()):
        layer = m["layers"].get(expert.layer)
        if layer is None or layer[1] != expert.shape:
            skipped.append(repo_id)
            continue
        units.append(_unit(repo_id, m["revision"], m["hub"], {expert.layer: layer}))
    tic = time.perf_counter()
    prefix = f"family{fit_family}/"
    arrays = ray.put({k: v for k, v in fitted.arrays.items() if k.startswith(prefix)})  # once, not with every task
    z, errors = _read(pool, units, partial(_responses, arrays, prefix))
    seconds["read"] += time.perf_counter() - tic
    skipped += sorted(errors)
    if not z:
        return
    tic = time.perf_counter()
    repos = sorted(z)
    scores, reps = expert.predict(torch.stack([z[r] for r in repos]))
    seconds["predict"] += time.perf_counter() - tic
    revision = {r: by_family[family_id][r]["revision"] for r in repos}
    for i, repo_id in enumerate(repos):
        key = {"repo_id": repo_id, "revision": revision[repo_id], "family_id": family_id, "expert": fitted.model_id}
        labels_rows += [{**key, "label": label, "score": float(s)} for label, s in zip(expert.labels, scores[i].tolist())]
        embedding_rows.append({**key, "layer": expert.layer, "embedding": reps[i].tolist()})


# ----------------------------------------------------------------------------- search


def search_lake(lake: Lake, query: str, limit: int = 10, model: str | None = None) -> list[Hit]:
    """The ``limit`` models of ``lake`` that best match ``query``: known and predicted labels, and ProbeX's text space."""
    fitted = load_probex_model(lake, model)
    predicted = lake.query("SELECT repo_id, label, score FROM model_labels WHERE expert = ?", [fitted.model_id]).to_pylist()
    embedded = lake.query("SELECT repo_id, family_id, embedding FROM probex_embeddings WHERE expert = ?", [fitted.model_id]).to_pylist()
    if not predicted and not fitted.known:
        raise LakeError(f"no labels in {lake.url}: run `hubtree probex predict --lake {lake.url}` first")
    descriptions = {l.label: l.description for l in fitted.known if l.description}
    for expert in fitted.experts.values():
        descriptions |= {n: t for n, t in zip(expert.labels, expert.texts) if n not in descriptions}
    names = sorted({l.label for l in fitted.known} | {r["label"] for r in predicted})
    encoder = text_encoder()
    embedded_texts = encoder.embed([query] + [label_text(n, descriptions.get(n)) for n in names])
    q = embedded_texts[0]
    label_scores: dict[str, dict[str, float]] = defaultdict(dict)
    for r in predicted:
        label_scores[r["repo_id"]][r["label"]] = r["score"]
    known: dict[str, set[str]] = defaultdict(set)
    for l in fitted.known:
        known[l.repo_id].add(l.label)
    # An embedding row's family is the current one; its expert is the one trained where its training models are.
    expert_of = {}
    for fit_family, expert in fitted.experts.items():
        homes = Counter(r["family_id"] for r in embedded if r["repo_id"] in set(fitted.train[fit_family]))
        if homes:
            expert_of[homes.most_common(1)[0][0]] = expert
    aligned = {}
    for r in embedded:
        if r["family_id"] in expert_of:
            aligned[r["repo_id"]] = float(torch.tensor(r["embedding"]) @ expert_of[r["family_id"]].query(q[None])[0])
    return rank(q, dict(zip(names, embedded_texts[1:])), label_scores, known, aligned, limit)


def hits_table(hits: list[Hit]) -> pa.Table:
    return pa.Table.from_pylist([{"repo_id": h.repo_id, "score": round(h.score, 4), "label": h.label, "evidence": h.evidence} for h in hits],
                                schema=pa.schema([("repo_id", pa.string()), ("score", pa.float64()), ("label", pa.string()), ("evidence", pa.string())]))

