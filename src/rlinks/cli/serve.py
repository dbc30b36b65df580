"""`rlinks serve`: the redirect service, with BH2 running beside it."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import click

from rlinks.backends import Target, open_log, open_routes, open_store
from rlinks.cli.common import data_option, err, partitions_option, reports_errors
from rlinks.server.config import ENV_ADMIN_TOKEN, ENV_CONFIG, ServeConfig, hit_salt
from rlinks.settings import DEFAULT_WINDOW_S

_PR_SET_PDEATHSIG = 1


@click.command()
@data_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8080, show_default=True)
@click.option(
    "--workers",
    type=int,
    default=1,
    show_default=True,
    help="Server processes; they share the data folder safely (SQLite WAL) or Redis.",
)
@partitions_option
@click.option(
    "--hits",
    type=click.Choice(["append", "kv", "off"]),
    default="append",
    show_default=True,
    help="append: log each hit for BH2; kv: per-hit read-modify-write of the stats "
    "key (the pre-BH2 baseline); off: record nothing.",
)
@click.option(
    "--durability",
    type=click.Choice(["commit", "async"]),
    default="commit",
    show_default=True,
    help="commit: redirect only after the hit is committed (a crash loses no "
    "redirected hit); async: redirect at once and write hits every 50 ms or "
    "2,048 hits, whichever comes first (a crash loses what is queued; a full "
    "queue drops hits and counts them in /metrics).",
)
@click.option(
    "--aggregate/--no-aggregate",
    default=True,
    show_default=True,
    help="Run the BH2 aggregator beside the server (--no-aggregate when "
    "`rlinks-bh2 run` runs as its own process). On Redis the aggregators of "
    "every `serve` share the partitions (`run --partitions auto`).",
)
@click.option(
    "--window",
    type=float,
    default=DEFAULT_WINDOW_S,
    show_default=True,
    help="The aggregator's flush window in seconds.",
)
@click.option(
    "--redirect-status",
    type=int,
    default=302,
    show_default=True,
    help="302 by default: browsers cache a 301 and then never come back, so "
    "repeat clicks would go uncounted.",
)
@click.option(
    "--public-host",
    "public_hosts",
    multiple=True,
    default=("localhost", "127.0.0.1"),
    show_default=True,
    help="Our own host names: a target pointing here is a loop (500).",
)
@click.option(
    "--trust-proxy",
    is_flag=True,
    help="Take the client address from X-Forwarded-For (only behind a proxy you run).",
)
@click.option(
    "--country-header",
    default="CF-IPCountry",
    show_default=True,
    help="Trusted header carrying the client's country ('' for none).",
)
@click.option(
    "--kv-latency-ms",
    type=float,
    default=0.0,
    show_default=True,
    help="Added to every KV call, to model a remote hosted KV.",
)
@click.option(
    "--route-cache-s",
    type=float,
    default=1.0,
    show_default=True,
    help="How often each worker reads the store's route changes: workers hold routes "
    "in memory (loaded at start), so an edit reaches every worker within this many "
    "seconds. 0 = read the KV on every redirect.",
)
@reports_errors
def serve(
    target: Target,
    partitions: int,
    host: str,
    port: int,
    workers: int,
    hits: str,
    durability: str,
    aggregate: bool,
    window: float,
    redirect_status: int,
    public_hosts: tuple[str, ...],
    trust_proxy: bool,
    country_header: str,
    kv_latency_ms: float,
    route_cache_s: float,
) -> None:
    """Serve redirects: GET /{code} answers with the route's target and records the hit.

    Also /healthz, /metrics (Prometheus) and, when RLINKS_ADMIN_TOKEN is set, the
    admin API under /api/links (bearer token).
    """
    config = ServeConfig(
        data_dir=None if target.data_dir is None else str(target.data_dir),
        backend_url=target.url,
        partitions=partitions,
        host=host,
        port=port,
        workers=workers,
        hits=hits,  # type: ignore[arg-type]
        durability=durability,  # type: ignore[arg-type]
        aggregate=aggregate,
        redirect_status=redirect_status,
        public_hosts=tuple(public_hosts),
        trust_proxy=trust_proxy,
        country_header=country_header or None,
        kv_latency_ms=kv_latency_ms,
        route_cache_s=route_cache_s,
        admin_token=os.environ.get(ENV_ADMIN_TOKEN) or None,
    )
    _prepare(target, partitions)
    # uvicorn stops gracefully on SIGTERM and then raises the signal again
    # with the handler it found. Python's default handler would end the
    # process there, skipping the clean-up below (the metrics folder was left
    # in TMPDIR on every stop); this one unwinds it and exits 0, as the
    # aggregator and uvicorn's multi-worker supervisor do.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    metrics_dir = tempfile.mkdtemp(prefix="rlinks-metrics-")
    aggregator: subprocess.Popen[bytes] | None = None
    try:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        os.environ[ENV_CONFIG] = config.to_env()
        if aggregate and hits == "append":
            aggregator = _start_aggregator(target, window)
        err.print(
            f"rlinks serving http://{host}:{port} (hits={hits}, durability={durability}, "
            f"workers={workers}, aggregator={f'pid {aggregator.pid}' if aggregator else 'off'}, "
            f"admin API {'on' if config.admin_token else 'off'})"
        )
        import uvicorn  # here, after PROMETHEUS_MULTIPROC_DIR is set for the metrics module

        from rlinks.server.protocol import RedirectProtocol

        uvicorn.run(
            "rlinks.server.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            loop="uvloop",
            # uvicorn's httptools protocol, answering held redirects in place.
            http=RedirectProtocol,
            lifespan="on",
            access_log=False,
            # We read X-Forwarded-For ourselves, and only with --trust-proxy.
            proxy_headers=False,
            log_level="warning",
            server_header=False,
        )
    finally:
        if aggregator is not None:
            aggregator.send_signal(signal.SIGTERM)
            try:
                aggregator.wait(timeout=10)
            except subprocess.TimeoutExpired:
                aggregator.kill()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _prepare(target: Target, partitions: int) -> None:
    """Create every store's schema and the hit salt once, before workers race to."""
    hit_salt(target)
    for store in (
        open_log(target, partitions=partitions),
        open_store(target),
        open_routes(target),
    ):
        store.close()


def _start_aggregator(target: Target, window: float) -> subprocess.Popen[bytes]:
    def die_with_parent() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rlinks.cli.bh2",
            "run",
            # On Redis, `serve` may run on many machines: their aggregators
            # share the partitions through leases instead of fencing each other.
            *(
                ("--backend", target.url, "--partitions", "auto")
                if target.url
                else ("--data", str(target.data_dir))
            ),
            "--window",
            str(window),
        ],
        preexec_fn=die_with_parent,
    )
