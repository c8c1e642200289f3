"""``hubtree probex`` and ``hubtree search``: what models were trained on, and finding them by text (flows in ``pipelines/probex.py``)."""
from __future__ import annotations

import click

from hubtree import prefect_local
from hubtree.cli_options import absolute, token_for_hub


@click.group()
def probex() -> None:
    """ProbeX: learn from labelled models what every model of their family was trained on.

    \b
      hubtree probex fit --lake L [--labels labels.csv]   # CSV: repo_id,label[,description]
      hubtree probex predict --lake L                     # model_labels and probex_embeddings
      hubtree search --lake L "reviews of kitchen gadgets"
    Needs the trees stage (families) first: hubtree stats, then hubtree trees.
    """


@probex.command()
@click.option("--lake", required=True, help="Lake root (folder or fsspec URL) with families (run `hubtree trees` first).")
@click.option("--labels", "labels_csv", default=None, type=click.Path(dir_okay=False, exists=True),
              help="CSV with header repo_id,label[,description], one row per label. Default: the datasets, "
                   "pipeline_tag, language and tags of cards in the lake that name their datasets.")
@click.option("--layers", default=None, help="Only 2-D tensors whose name matches this regex are candidate layers.")
@click.option("--min-labelled", default=8, show_default=True, help="Labelled members a family needs for an expert.")
@click.option("--max-layers", default=12, show_default=True, help="Candidate layers tried per family (spread over depth).")
@click.option("--epochs", default=100, show_default=True, help="At most this many training epochs of the nets (the count is chosen by cross-validation).")
@click.option("--hub", default=None, help="Read weights from this hub instead of the one each repo was crawled from.")
@token_for_hub
@click.option("--ray-address", default=None, help="Join this Ray cluster instead of starting Ray here.")
def fit(lake, labels_csv, layers, min_labelled, max_layers, epochs, hub, ray_address) -> None:
    """Fit one ProbeX expert per family with enough labelled members; store them in the lake.

    \b
    Each expert reads one layer, chosen among the candidates by cross-validation over the
    family's labelled members (repeated over 2 splits). Its probes are the top singular
    directions of the labelled models' updates; a ridge on their responses labels models,
    and 2 ProbeX nets trained on them give the text space. Experts, layers and the labels
    go to LAKE/blobs/probex/<model_id>/<run_id>.npz (listed in blobs). Families with too
    few labelled members get no expert and are listed.
    """
    from hubtree.pipelines.probex import probex_fit_flow

    with prefect_local.foreground():
        s = probex_fit_flow(lake=absolute(lake), labels_csv=labels_csv, hub=hub, layers=layers, min_labelled=min_labelled,
                            max_layers=max_layers, epochs=epochs, ray_address=ray_address)
    for family, e in sorted(s["experts"].items()):
        click.echo(f"family {family}: expert on {e['layer']} ({e['labels']} labels, {e['members']} labelled models, "
                   f"cross-validated accuracy {e['val_accuracy']:.3f})")
    for family, why in sorted(s["skipped"].items()):
        click.echo(f"family {family}: no expert: {why}")
    if not s["experts"]:
        raise click.ClickException("no family has enough labelled models for an expert: label more models (--labels) or lower --min-labelled")
    click.echo(f"probex fit {s['status']}: model {s['model_id']} ({len(s['experts'])} experts, "
               f"{s['seconds']['read']:.1f} s reading, {s['seconds']['fit']:.1f} s fitting)")


@probex.command()
@click.option("--lake", required=True, help="Lake root (folder or fsspec URL).")
@click.option("--model", "model_id", default=None, help="Model id from `probex fit` (default: the latest fit).")
@click.option("--hub", default=None, help="Read weights from this hub instead of the one each repo was crawled from.")
@token_for_hub
@click.option("--ray-address", default=None, help="Join this Ray cluster instead of starting Ray here.")
def predict(lake, model_id, hub, ray_address) -> None:
    """Label every model of each family with an expert: model_labels (a score in [0, 1] per label)
    and probex_embeddings (its place in the space shared with text). Reads one layer per model."""
    from hubtree.lake import Lake
    from hubtree.pipelines.probex import load_probex_model, probex_predict_flow

    the_lake = Lake(absolute(lake))
    the_lake.require()
    load_probex_model(the_lake, model_id)  # a missing model is one clear line, before any flow starts
    with prefect_local.foreground():
        s = probex_predict_flow(lake=absolute(lake), model=model_id, hub=hub, ray_address=ray_address)
    click.echo(f"probex predict {s['status']}: {s['models']} models labelled ({s['labels']} scores) with model {s['model_id']}, "
               f"{len(s['skipped'])} skipped; {s['bytes_fetched'] / 1e6:.2f} MB read")


@click.command()
@click.option("--lake", required=True, help="Lake root (folder or fsspec URL) after `probex fit` and `probex predict`.")
@click.option("--limit", default=10, show_default=True, help="How many models to print.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--model", "model_id", default=None, help="Model id from `probex fit` (default: the latest fit).")
@click.argument("query")
def search(lake, limit, fmt, model_id, query) -> None:
    """Models that match a free-text QUERY, best first (first column repo_id).

    \b
    The query is embedded by all-MiniLM-L6-v2 (bundled, offline) and matched to the labels'
    descriptions; models score by the labels they are known or predicted to have, and by
    how close their weights sit to the query in ProbeX's text space.
    Example: hubtree search --lake L "opinions of people who bought blenders"
    """
    from hubtree.cli import format_table
    from hubtree.lake import Lake
    from hubtree.pipelines.probex import hits_table, search_lake

    the_lake = Lake(absolute(lake))
    the_lake.require()
    click.echo(format_table(hits_table(search_lake(the_lake, query, limit, model_id)), fmt))
