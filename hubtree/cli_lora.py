"""``hubtree lora`` and ``hubtree dsire``: the LoRA attacks as commands (flows in ``pipelines/lora.py``)."""
from __future__ import annotations

import click

from hubtree import prefect_local
from hubtree.cli_options import absolute, token_for_hub


@click.command()
@click.option("--lake", required=True, help="Lake root (folder or fsspec URL), crawled first.")
@click.option("--hub", default=None, help="Read weights from this hub instead of the one each repo was crawled from.")
@token_for_hub
@click.option("--layers", default=None, help="Only 2-D tensors whose name matches this regex (default: all).")
@click.option("--iterations", default=300, show_default=True, help="Spectral DeTuning iterations per layer (at most).")
@click.option("--ray-address", default=None, help="Join this Ray cluster instead of starting Ray here.")
def lora(lake, hub, layers, iterations, ray_address) -> None:
    """Recover the pre-fine-tuning weights behind sets of LoRA merges (Spectral DeTuning).

    \b
    Full-weight repos are grouped by the parent they declare (it may be missing from
    the hub); repos that declare nothing join a group when they differ from it at low
    rank. Each group is checked: members that are not LoRA merges of one base are left
    out (and named), targeted layers and their LoRA ranks are estimated (never asked).
    Groups of 3+ merges are detuned on a pool of Ray actors; recovered layers go to
    a safetensors file per base (LAKE/blobs/recovered/, listed in blobs) and one lora_recoveries row per layer
    (w_error where the true base is in the lake). A group that cannot be attacked gets
    rows with confidence 'low: <why>' instead of weights; one whose weights cannot be
    read gets 'failed: <why>' and the run ends partial (exit 3).
    """
    from hubtree.cli import exit_for, progress_bars, require_lake

    require_lake(lake)
    from hubtree.pipelines.lora import lora_flow

    with prefect_local.foreground():
        s = lora_flow(lake=absolute(lake), hub=hub, layers=layers, ray_address=ray_address, iterations=iterations, progress=progress_bars())
    click.echo(
        f"lora {s['status']}: {s['groups']} candidate groups, {s['recovered']} bases recovered "
        f"({s['layers']} layers), {s['low']} low-confidence, {s['failed']} failed" + "".join(f"\n  {f}" for f in s["files"])
    )
    exit_for(s["status"])


@click.group()
def dsire() -> None:
    """DSiRe: estimate how many samples a LoRA adapter was trained on, from its spectra.

    \b
      hubtree dsire fit --lake L --labels sizes.csv   # CSV: repo_id,dataset_size
      hubtree dsire predict --lake L                  # every other adapter in the lake
    """


@dsire.command()
@click.option("--lake", required=True, help="Lake root (folder or fsspec URL), crawled first.")
@click.option("--labels", "labels_csv", required=True, type=click.Path(dir_okay=False), help="CSV with header repo_id,dataset_size.")
@click.option("--hub", default=None, help="Read adapters from this hub instead of the one each repo was crawled from.")
@token_for_hub
def fit(lake, labels_csv, hub) -> None:
    """Fit DSiRe on the labelled adapters and store it in the lake.

    Reads the A and B of every adapter without spectra in lora_spectra by range, stores theirs, fits
    the 1-NN voters on the adapters in the CSV (normalisation from those only) and
    stores the model through the lake (LAKE/blobs/dsire/, listed in blobs); prints the model id.
    """
    from hubtree.cli import require_lake

    require_lake(lake)
    from hubtree.pipelines.lora import dsire_fit_flow

    with prefect_local.foreground():
        s = dsire_fit_flow(lake=absolute(lake), labels_csv=labels_csv, hub=hub)
    click.echo(f"dsire fit {s['status']}: model {s['model_id']} on {s['n_train']} adapters")


@dsire.command()
@click.option("--lake", required=True, help="Lake root (folder or fsspec URL), crawled first.")
@click.option("--model", "model_id", default=None, help="Model id from `dsire fit` (default: the latest fit).")
@click.option("--hub", default=None, help="Read adapters from this hub instead of the one each repo was crawled from.")
@token_for_hub
def predict(lake, model_id, hub) -> None:
    """Estimate dataset sizes of every adapter in the lake that did not train the model.

    Writes dataset_size_estimates (estimate, the winning vote share, number of adapted
    layers, model id); adapters of another base or LoRA config are skipped and counted.
    Spectra stored by an earlier run are not read again; an adapter that cannot be read
    gets a crawl_errors row, and the run ends partial (exit 3).
    """
    from hubtree.cli import exit_for, require_lake

    the_lake = require_lake(absolute(lake))
    from hubtree.pipelines.lora import dsire_predict_flow, load_dsire_model

    load_dsire_model(the_lake, model_id)  # a missing model is one clear line, before any flow starts
    with prefect_local.foreground():
        s = dsire_predict_flow(lake=absolute(lake), model=model_id, hub=hub)
    click.echo(f"dsire predict {s['status']}: {s['estimated']} adapters estimated with model {s['model_id']}, "
               f"{len(s['skipped'])} skipped (another base or LoRA config), {len(s['failed'])} unreadable (see crawl_errors)")
    exit_for(s["status"])
