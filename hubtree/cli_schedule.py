"""``hubtree schedule``, ``schedules``, ``rerun`` and ``server``: the pipeline as a Prefect deployment.

Where the API is: :mod:`hubtree.prefect_local`. Everything a user can get wrong (a cron,
a deployment name, a parameter, nothing serving) is checked here before Prefect starts work,
and said in one line with what to do.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import click

from hubtree import prefect_local
from hubtree.errors import HubtreeError

FLOW = "hubtree-run"
SERVED_WITHIN_S = 90  # a runner polls every 10 s (PREFECT_RUNNER_POLL_FREQUENCY); 90 s of silence = gone
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def validate_cron(cron: str) -> str:
    """A five-field cron line, or a message naming what is wrong (Prefect only finds out after serving)."""
    from cronsim import CronSim, CronSimError

    fields = cron.split()
    try:
        if len(fields) != 5:
            raise CronSimError(f"{len(fields)} fields, cron has 5 (minute hour day month weekday)")
        CronSim(cron, datetime.now(timezone.utc))
    except CronSimError as err:
        raise HubtreeError(f"bad cron {cron!r}: {err}; e.g. '0 3 * * *' is 03:00 UTC daily") from None
    return cron


def default_name(lake: str) -> str:
    """``nightly-<lake folder>-<hash of the lake URL>``: two lakes never share a deployment."""
    tag = hashlib.sha1(lake.encode()).hexdigest()[:6]
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(lake.rstrip("/")).name)[:40] or "lake"
    return f"nightly-{stem}-{tag}"


def connect_api(what: str) -> str:
    """The API URL to use for ``what``; an error saying what to start when there is none."""
    api = prefect_local.configure()
    if not api:
        raise HubtreeError(
            f"no Prefect server is running, so nothing can {what}: start `hubtree schedule ...` "
            "(it starts hubtree's local server) or set PREFECT_API_URL"
        )
    if not prefect_local.healthy(api, timeout_s=3):
        raise HubtreeError(f"the Prefect API at {api} refused the connection or did not answer: start it, or fix PREFECT_API_URL")
    return api


def schedule_command(crawl_options, query_params):
    """Built by cli.py, which owns the crawl options shared with `crawl` and `run`."""

    @click.command()
    @crawl_options
    @click.option("--cron", default="0 3 * * *", show_default=True, help="When to run, as a cron line (UTC).")
    @click.option("--every", "interval", default=None, type=click.FloatRange(min=1), help="Run every SECONDS instead of on --cron.")
    @click.option("--name", default=None, help="Deployment name (default: nightly-<lake>-<hash>); runs as hubtree-run/NAME.")
    def schedule(cron: str, interval: float | None, name: str | None, **options) -> None:
        """Serve `hubtree run` as a Prefect deployment on a cron schedule.

        \b
        Without PREFECT_API_URL this starts hubtree's local Prefect server (state in
        ~/.hubtree/prefect, or $HUBTREE_HOME/prefect), or reuses the one running, since
        schedules need a server. This process is the runner: it starts each scheduled
        run and any `hubtree rerun`. Ctrl-C or SIGTERM stops it (and the server it started);
        the schedule is paused until it is served again. For a work pool, see deploy/.
        """
        if interval is None:
            validate_cron(cron)
        params = query_params(**options)
        name = name or default_name(params["lake"])
        server = None
        if not prefect_local.configure():
            server = prefect_local.ensure_server(echo=lambda line: click.echo(line, err=True))
            os.environ["PREFECT_API_URL"] = server.api_url
        when = f"every {interval:g} s" if interval else f"on cron '{cron}' (UTC)"
        click.echo(f"serving {FLOW}/{name} {when} against {os.environ.get('PREFECT_API_URL')} (Ctrl-C to stop)")
        try:
            asyncio.run(_serve(name, cron=None if interval else cron, interval=interval, parameters=params))
        except KeyboardInterrupt:
            pass
        finally:
            if server is not None:
                server.stop()
        click.echo(f"stopped serving {FLOW}/{name}")

    return schedule


async def _serve(name: str, cron: str | None, interval: float | None, parameters: dict) -> None:
    """Prefect's Runner for the deployment, one run at a time, stopped by SIGTERM or Ctrl-C.

    Prefect's own SIGTERM handler (3.8) never awaits its stop, so running flow runs go on
    for minutes; here the signal stops the runner, which cancels its runs and pauses the schedule.
    """
    from prefect.runner import Runner

    from hubtree.pipelines.run import run_flow

    runner = Runner(name=name, pause_on_shutdown=True, limit=1)  # runs never overlap on one lake
    deployment_id = await runner.aadd_flow(run_flow, name=name, cron=cron, interval=interval, parameters=parameters)
    await _schedule_first_runs(deployment_id)
    serving = asyncio.create_task(runner.start())
    await asyncio.sleep(0.1)  # start() installs Prefect's SIGTERM handler first; take it back
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set() and runner.started:
        await runner.astop()
    await serving


async def _schedule_first_runs(deployment_id) -> None:
    """Have the server create the deployment's next runs now, as its scheduler service would on its
    next loop: that loop comes every 60 s on a server hubtree did not start (10 s on its own), so
    a `* * * * *` schedule could otherwise skip the first minute or two."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        answer = await client.request("POST", "/deployments/{id}/schedule", path_params={"id": deployment_id}, json={})
        answer.raise_for_status()


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@click.command()
def schedules() -> None:
    """List deployments with their schedules, whether something serves them, and the last and next runs."""
    connect_api("be listed")
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    import pyarrow as pa

    from hubtree.cli import format_table

    rows = []
    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows()}
        for dep in client.read_deployments():
            only = DeploymentFilter(id=DeploymentFilterId(any_=[dep.id]))
            done = client.read_flow_runs(
                deployment_filter=only, sort=FlowRunSort.START_TIME_DESC, limit=1,
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[
                    StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED, StateType.RUNNING]))),
            )
            upcoming = client.read_flow_runs(
                deployment_filter=only, sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=1,
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
            )
            rows.append({
                "deployment": f"{flows.get(dep.flow_id, '?')}/{dep.name}",
                "schedule": ", ".join(_describe(s.schedule) for s in dep.schedules) or "none",
                "active": "paused" if dep.paused else "active",
                "served": "yes" if _served(dep) else "no",
                "lake": (dep.parameters or {}).get("lake"),
                "last_run": f"{done[0].state_name} {_at(done[0].start_time)}" if done else None,
                "next_run": _at(upcoming[0].expected_start_time) if upcoming else None,
            })
    if not rows:
        click.echo("nothing is scheduled: start one with `hubtree schedule --hub HUB --lake LAKE`")
        return
    click.echo(format_table(pa.Table.from_pylist(rows), "table"))


def _describe(schedule) -> str:
    if getattr(schedule, "cron", None):
        return f"cron {schedule.cron}"
    if getattr(schedule, "interval", None):
        return f"every {schedule.interval.total_seconds():g} s"
    return type(schedule).__name__


def _at(moment) -> str | None:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else None


def _served(deployment) -> bool:
    polled = deployment.last_polled
    return polled is not None and datetime.now(timezone.utc) - polled < timedelta(seconds=SERVED_WITHIN_S)


def parse_param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{text!r} is not KEY=VALUE", param_hint="--param")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


@click.command()
@click.argument("deployment")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Override a parameter (VALUE as JSON when it parses, else text); repeatable.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the run to finish and print its summary.")
@click.option("--start-timeout", default=60, show_default=True, help="Seconds the run may wait to be picked up before it is withdrawn.")
def rerun(deployment: str, params: tuple[str, ...], wait: bool, start_timeout: int) -> None:
    """Run a deployment now: `hubtree rerun nightly-lake-1a2b3c --param limit=10`.

    \b
    DEPLOYMENT is NAME or hubtree-run/NAME (`hubtree schedules` lists them). Something
    must serve it (`hubtree schedule`, or a worker on its work pool): checked first.
    A run nobody picks up within --start-timeout is deleted, not left to fire later.
    Reruns are idempotent: repos already in the lake are skipped.
    """
    overrides = dict(parse_param(p) for p in params)
    connect_api(f"run {deployment}")
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    full = deployment if "/" in deployment else f"{FLOW}/{deployment}"
    with get_client(sync_client=True) as client:
        try:
            dep = client.read_deployment_by_name(full)
        except ObjectNotFound:
            known = sorted(d.name for d in client.read_deployments())
            raise HubtreeError(f"no deployment {full!r}; known: {', '.join(known) or 'none'} (`hubtree schedules` lists them)") from None
        accepted = set((dep.parameter_openapi_schema or {}).get("properties", {}))
        unknown = sorted(set(overrides) - accepted)
        if unknown:
            raise HubtreeError(f"{full} has no parameter {', '.join(map(repr, unknown))}; it takes: {', '.join(sorted(accepted))}")
        if not dep.work_pool_name and (dep.paused or not _served(dep)):
            why = "it is paused: its runner stopped" if dep.paused else f"its runner last polled {_at(dep.last_polled) or 'never'}"
            raise HubtreeError(f"nothing serves {full} ({why}): start `hubtree schedule --name {dep.name} ...` and rerun")
        flow_run = client.create_flow_run_from_deployment(dep.id, parameters=overrides)
        click.echo(f"flow run {flow_run.name} ({flow_run.id}) created")
        if not wait:
            return
        state = _wait(client, flow_run.id, start_timeout)
    click.echo(f"flow run {flow_run.name} ({flow_run.id}): {state}")
    _print_run_rows({**(dep.parameters or {}), **overrides}.get("lake"), str(flow_run.id))
    if state != "Completed":
        raise SystemExit(1)


def _wait(client, flow_run_id, start_timeout: int) -> str:
    """Poll until the run ends; withdraw it when nobody starts it in time or the user gives up."""
    started_waiting = time.monotonic()
    try:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state and run.state.type.value in FINAL:
                return run.state.name
            if run.state and run.state.type.value in ("SCHEDULED", "PENDING") and run.start_time is None:
                if time.monotonic() - started_waiting > start_timeout:
                    client.delete_flow_run(flow_run_id)
                    raise HubtreeError(f"nothing picked the run up within {start_timeout} s; it was deleted. Is `hubtree schedule` still running?")
            time.sleep(1)
    except KeyboardInterrupt:
        run = client.read_flow_run(flow_run_id)
        if run.start_time is None:
            client.delete_flow_run(flow_run_id)
            click.echo("interrupted: the run had not started and was deleted", err=True)
        else:
            click.echo(f"interrupted: the run goes on; follow it with `hubtree schedules`", err=True)
        raise


def _print_run_rows(lake: str | None, flow_run_id: str) -> None:
    """The run's crawl_runs rows (its own and its stages'), read from the lake it wrote."""
    if not lake:
        return
    from hubtree.cli import format_table
    from hubtree.lake import Lake

    query = ("SELECT flow, status, repos_crawled, repos_failed, bytes_fetched, finished_at FROM crawl_runs "
             "WHERE root_flow_run_id = ? ORDER BY started_at")
    try:
        rows = Lake(lake).query(query, [flow_run_id])
    except Exception:  # an old lake without the column, or one the runner cannot reach from here
        rows = None
    if rows is not None and rows.num_rows:
        click.echo(format_table(rows, "table"))
    else:
        click.echo(f'summary: hubtree sql --lake {lake} "select * from crawl_runs where root_flow_run_id = \'{flow_run_id}\'"')


@click.command()
def server() -> None:
    """Run hubtree's local Prefect server in the foreground (state in ~/.hubtree/prefect).

    While it runs, every verb reports its flows to it (no temporary server per verb),
    and `hubtree schedule` reuses it; the UI is at the printed address.
    """
    if os.environ.get("PREFECT_API_URL"):
        raise HubtreeError(f"PREFECT_API_URL is set ({os.environ['PREFECT_API_URL']}): hubtree uses that server, not its own")
    local = prefect_local.ensure_server(echo=lambda line: click.echo(line, err=True))
    if local.process is None:
        raise HubtreeError(f"hubtree's local Prefect server already runs at {local.api_url}")
    click.echo(f"Prefect API at {local.api_url}, UI at {local.api_url.removesuffix('/api')} (Ctrl-C to stop)")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        local.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        local.stop()
