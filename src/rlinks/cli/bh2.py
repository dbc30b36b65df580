"""`rlinks-bh2`: the BH2 aggregation job and its tools."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import click
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
)
from rich.table import Table

from rlinks import __version__
from rlinks.aggregator import Aggregator, Counters
from rlinks.backends import Target, open_call_ledger, open_log, open_store
from rlinks.batch import Batch
from rlinks.cli.common import (
    data_option,
    err,
    json_option,
    out,
    partitions_option,
    print_json,
    reports_errors,
)
from rlinks.cli.cost import cost
from rlinks.compact import DEFAULT_KEEP, compact, open_log_to_trim, parse_age, seed_from_summaries
from rlinks.errors import ConfigError
from rlinks.file_aggregate import aggregate_file
from rlinks.hits import WIRE_HIT_DECODER, to_hit, ts_reason
from rlinks.leases import DEFAULT_LEASE_S, Ownership, parse_partitions
from rlinks.ndjson import decode_chunk, read_chunks
from rlinks.sample import write_sample
from rlinks.settings import DEFAULT_MAX_BATCH, DEFAULT_WINDOW_S, Settings
from rlinks.status import freshness, read_status, snapshot_json
from rlinks.timefmt import format_lag, format_ms, now_ms
from rlinks.verify import differences


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rlinks-bh2")
@click.option("-v", "--verbose", is_flag=True, help="Log each batch to stderr.")
def cli(verbose: bool) -> None:
    """BH2: exact, batched click statistics for rlinks.

    Hits are appended to the HITS log (`ingest`, or the redirect server); `run`
    folds them into per-code stats behind a watermark, at most one write per
    code per window, exactly once whatever crashes or retries happen.

    \b
    Typical use:
      rlinks-bh2 ingest --data ./data hits.ndjson
      rlinks-bh2 run --data ./data --once
      rlinks-bh2 stats --data ./data --code my-code
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main() -> None:
    cli(prog_name="rlinks-bh2")


# -- ingest ---------------------------------------------------------------------


@cli.command()
@data_option
@click.argument("files", nargs=-1, required=True)
@partitions_option
@click.option(
    "--dedup-horizon",
    default="24h",
    show_default=True,
    help="Redis: how long hit ids are remembered to drop resent hits (exact inside "
    "it). The embedded log remembers them until `compact` trims their hits.",
)
@reports_errors
def ingest(target: Target, files: tuple[str, ...], partitions: int, dedup_horizon: str) -> None:
    """Append NDJSON hits from FILES ("-" = stdin) to the HITS log.

    One JSON object per line with `code` ([a-z0-9-]{1,64}) and `ts` (RFC 3339 or
    Unix seconds); optional `id`, `country`, `ua_hash`, `referrer`, `ip_prefix`.
    A hit whose `id` is already logged is dropped, so re-sending is harmless;
    a hit without an id gets a new one. Bad lines are quarantined with their
    line number and reason; a final line without a newline is left for later.
    """
    horizon = parse_age(dedup_horizon, option="--dedup-horizon") // 1000
    if horizon < 1:
        raise ConfigError("--dedup-horizon must be at least 1s")
    for src in files:
        if src == "-":
            ingest_stream(target, sys.stdin.buffer, "-", partitions=partitions, horizon_s=horizon)
            continue
        size = _size(src)
        with _open_input(src) as stream:
            ingest_stream(target, stream, src, size=size, partitions=partitions, horizon_s=horizon)


def ingest_stream(
    target: Target,
    stream: BinaryIO,
    src: str,
    *,
    size: int | None = None,
    quiet: bool = False,
    partitions: int = 1,
    horizon_s: int | None = None,
) -> None:
    """Append the NDJSON hits of one stream to the log, with progress and a summary."""
    log = open_log(target, partitions=partitions, dedup_horizon_s=horizon_s)
    appended = duplicates = quarantined = without_id = 0
    with _byte_progress(f"ingest {src}", size) as (progress, task):
        for chunk in read_chunks(stream):
            got = decode_chunk(chunk, WIRE_HIT_DECODER, accept=ts_reason)
            without_id += sum(1 for w in got.items if w.id is None)
            positions = log.append([to_hit(w) for w in got.items])
            dup = sum(p.duplicate for p in positions)
            appended += len(positions) - dup
            duplicates += dup
            quarantined += len(got.quarantined)
            log.quarantine(src, got.quarantined)
            progress.update(task, completed=chunk.end_offset)
    log.close()
    err.print(
        f"{src}: appended {appended:,} hits, dropped {duplicates:,} duplicates, "
        f"quarantined {quarantined:,} lines"
    )
    if without_id and not quiet:
        err.print(
            f"note: {without_id:,} hits had no id and were given new ones; "
            "ingesting the same lines again would count them again"
        )


def _open_input(src: str) -> BinaryIO:
    try:
        return open(src, "rb")
    except OSError as e:
        raise ConfigError(f"cannot read {src}: {e.strerror}") from e


@contextlib.contextmanager
def _byte_progress(label: str, total: int | None) -> Iterator[tuple[Progress, TaskID]]:
    """A bytes progress bar on stderr, for inputs over 8 MiB (or of unknown size)."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        console=err,
        transient=True,
        disable=total is not None and total < 8 * 1024 * 1024,
    )
    with progress:
        yield progress, progress.add_task(label, total=total)


# -- aggregate (the seed's command) ------------------------------------------------


@cli.command()
@click.option("--in", "src", required=True, help='NDJSON hits file ("-" = stdin).')
@click.option(
    "--out",
    "out_file",
    required=True,
    type=click.Path(path_type=Path),
    help="Stats JSON file; read first for its watermark, then replaced atomically.",
)
@click.option("--code", help="Keep only this code in `stats`.")
@click.option(
    "--from-start",
    is_flag=True,
    help="Ignore the out file's watermark and recount the whole input.",
)
@reports_errors
def aggregate(src: str, out_file: Path, code: str | None, from_start: bool) -> None:
    """Aggregate an NDJSON hits file into a stats JSON file, incrementally.

    The out file carries a watermark: running again on the same input changes
    nothing, a grown input adds only its new complete lines, and a truncated or
    replaced input is refused unless --from-start. Every complete valid line
    counts (no id dedup: that is the HITS log's job).
    """
    size = None if src == "-" else _size(src)
    with _byte_progress(f"aggregate {src}", size) as (progress, task):
        result = aggregate_file(
            src,
            out_file,
            code=code,
            from_start=from_start,
            progress=lambda done: progress.update(task, completed=done),
        )
    err.print(
        f"read {result.lines:,} new lines: counted {result.counted:,}, "
        f"quarantined {result.quarantined:,}; {result.codes:,} codes in {out_file}"
    )


def _size(src: str) -> int:
    try:
        return Path(src).stat().st_size
    except OSError as e:
        raise ConfigError(f"cannot read {src}: {e.strerror}") from e


# -- run / rebuild -----------------------------------------------------------------


@cli.command()
@data_option
@click.option(
    "--window",
    type=float,
    default=DEFAULT_WINDOW_S,
    show_default=True,
    help="Seconds between flushes: each code's stats are written at most once per window.",
)
@click.option(
    "--max-batch",
    type=int,
    default=DEFAULT_MAX_BATCH,
    show_default=True,
    help="Flush early when this many hits are pending (catch-up runs full batches).",
)
@click.option("--once", is_flag=True, help="Process everything in the log now, then exit 0.")
@click.option(
    "--partitions",
    "which",
    default="all",
    show_default=True,
    metavar="all|auto|LIST",
    help="all: take every partition now, fencing out any other aggregator. "
    "auto: share the partitions with the other `--partitions auto` workers "
    "(leases; a dead worker's partitions move within about one --lease). "
    "LIST (0,2,4-5): hold these partitions under leases.",
)
@click.option(
    "--lease",
    "lease_s",
    type=click.FloatRange(min=0.3),
    default=DEFAULT_LEASE_S,
    show_default=True,
    help="Seconds a worker's lease lasts without renewal (auto or LIST).",
)
@click.option("--worker-id", help="This worker's name in leases (default: host:pid:random).")
@reports_errors
def run(
    target: Target,
    window: float,
    max_batch: int,
    once: bool,
    which: str,
    lease_s: float,
    worker_id: str | None,
) -> None:
    """Run BH2: fold hits after the watermark into stats, exactly once.

    By default takes every partition under a new epoch; an older aggregator
    still running is fenced out (its next apply is refused and it exits 3).
    With --partitions auto, any number of workers on any machines share the
    partitions through leases, and a paused or dead worker's partitions move
    to the others (its late applies are refused by the epoch, never counted).
    SIGTERM or SIGINT flush what is pending and stop cleanly.
    """
    settings = Settings.build(
        target.data_dir, backend=target.url, window_s=window, max_batch=max_batch
    )
    _aggregate(settings, once=once, which=which, lease_s=lease_s, worker=worker_id)


def aggregate_now(settings: Settings) -> Counters:
    """Everything in the log, aggregated now (`run --once`)."""
    return _aggregate(settings, once=True)


@cli.command()
@data_option
@reports_errors
def rebuild(target: Target) -> None:
    """Recompute all stats from offset 0 under a new epoch.

    Hits that `compact` trimmed from the log are restored from its summary
    (per code and UTC day) as each partition's first batch; the hits the log
    still holds are then counted as usual. Any aggregator still running is
    fenced out by the new epoch and stops; run it again afterwards to keep
    stats fresh.
    """
    settings = Settings.build(target.data_dir, backend=target.url)
    log = open_log(target, create=False)
    store = open_store(target)
    epochs = store.reset(log.partitions)
    err.print(f"stats cleared; watermarks at 0 (epochs {epochs})")
    seeded = seed_from_summaries(log, store, epochs)
    for p, upto in seeded.items():
        err.print(
            f"partition {p}: offsets 1..{upto:,} were compacted; counted them from "
            "the compaction summary"
        )
    err.print("recounting the log" + (" after the compacted offsets" if seeded else ""))
    _aggregate(settings, once=True)


def _keep_ms(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    try:
        return parse_age(value)
    except ConfigError as e:
        raise click.BadParameter(str(e)) from e


@cli.command("compact")
@data_option
@click.option(
    "--keep",
    "keep_ms",
    default=DEFAULT_KEEP,
    show_default=True,
    metavar="AGE",
    callback=_keep_ms,
    help="Keep every block holding a hit younger than this: 30d, 12h, 90m, 45s, "
    "or 0 (trim everything counted).",
)
@json_option
@reports_errors
def compact_log(target: Target, keep_ms: int, as_json: bool) -> None:
    """Trim counted hits older than --keep from the HITS log, keeping counts exact.

    Per partition, whole blocks are dropped from the start of the log while
    they end at or below the stats watermark and hold no hit younger than
    --keep; nothing above the watermark is ever trimmed. The dropped hits are
    folded, in the same atomic step, into a per-partition summary (hits, first
    and last hit per code and UTC day), which `verify` and `rebuild` use in
    their place, so both stay exact. Running it again only trims what has
    aged or been counted since.

    \b
    Duplicate ids after compaction:
      --data (SQLite): the ids of trimmed hits are forgotten with them, so the
        dedup horizon becomes the retention: a hit resent after its block was
        trimmed is logged and counted again.
      --backend (Redis): ids are remembered for the log's dedup horizon
        (24 h) whether or not their hits were trimmed.

    An aggregator whose watermark is below the trimmed offsets (for example a
    reset stats store) stops with a gap error instead of miscounting;
    `rebuild` recounts from the summary.
    """
    log = open_log_to_trim(target)
    store = open_store(target)
    older_than = now_ms() - keep_ms
    done = compact(log, store, older_than_ms=older_than)
    if as_json:
        print_json(
            {
                "keep_ms": keep_ms,
                "older_than": format_ms(older_than),
                "dropped": sum(c.dropped for c in done),
                "partitions": [c.__dict__ for c in done],
            }
        )
    else:
        for c in done:
            out.print(
                f"partition {c.partition}: dropped {c.dropped:,} hits; compacted up to "
                f"offset {c.compacted_upto:,} (watermark {c.watermark:,})"
            )
    for c in done:
        if c.compacted_upto > c.watermark:
            err.print(
                f"[bold yellow]warning:[/] partition {c.partition}: the watermark "
                f"{c.watermark:,} is below the compacted offset {c.compacted_upto:,}; "
                "the aggregator will stop with a gap error: run `rlinks-bh2 rebuild`",
                markup=True,
            )


def _aggregate(
    settings: Settings,
    *,
    once: bool,
    which: str = "all",
    lease_s: float = DEFAULT_LEASE_S,
    worker: str | None = None,
) -> Counters:
    log = open_log(settings.target, create=False)
    store = open_store(settings.target)
    ownership = None
    if which != "all":
        ownership = Ownership(
            store,
            log.partitions,
            wanted=parse_partitions(which, log.partitions),
            worker=worker,
            lease_s=lease_s,
        )
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        console=err,
        transient=True,
    )
    task = progress.add_task("aggregating", total=None, rate="")

    def on_flush(batch: Batch, counters: Counters) -> None:
        logging.getLogger("rlinks.bh2").info(
            "partition %d: applied (%d, %d], %d hits, %d keys written; lag %d hits",
            batch.partition,
            batch.start,
            batch.end,
            batch.hits,
            batch.codes,
            counters.lag_hits,
        )
        progress.update(task, completed=counters.hits_read)

    agg = Aggregator(log, store, settings, on_flush=on_flush, ownership=ownership)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agg.stop())
    agg.start()
    progress.update(task, total=agg.counters.lag_hits)
    if once and agg.counters.lag_hits > 1_000_000:
        progress.start()
    try:
        counters = agg.run(once=once)
    finally:
        progress.stop()
    if ownership is not None:
        err.print(
            f"worker {ownership.worker}: {counters.partitions_lost:,} partitions "
            "lost to other workers"
        )
    err.print(
        f"read {counters.hits_read:,} hits in {counters.batches:,} batches, "
        f"{counters.kv_writes:,} KV writes; lag {counters.lag_hits:,} hits; "
        f"{counters.quarantined:,} records in quarantine"
    )
    return counters


# -- reading -----------------------------------------------------------------------


@cli.command()
@data_option
@click.option("--code", help="Only this code.")
@click.option(
    "--limit",
    type=int,
    default=50,
    show_default=True,
    help="Rows in the table (most hits first); --json prints every code.",
)
@json_option
@reports_errors
def stats(target: Target, code: str | None, limit: int, as_json: bool) -> None:
    """Per-code stats snapshots, with how fresh they are ("as of" and lag)."""
    print_stats(target, code=code, limit=limit, as_json=as_json)


def print_stats(target: Target, *, code: str | None, limit: int, as_json: bool) -> None:
    log = open_log(target, create=False)
    store = open_store(target)
    fresh = freshness(read_status(log, store))
    if code is not None:
        snap = store.snapshot(code)
        snaps = [snap] if snap else []
    else:
        snaps = list(store.snapshots())
    if as_json:
        print_json({**fresh, "stats": {s.code: snapshot_json(s) for s in snaps}})
        return
    if code is not None and not snaps:
        out.print(f"no hits counted for {code!r} (as of {fresh['as_of'] or 'never'})")
        return
    table = Table(
        title=f"stats as of {fresh['as_of'] or 'never'}; lag {fresh['lag_hits']:,} hits "
        f"({format_lag(fresh['lag_s'])})"
    )
    for col in ("code", "hits", "first hit", "last hit", "days"):
        table.add_column(col, justify="right" if col in ("hits", "days") else "left")
    top = sorted(snaps, key=lambda s: (-s.hits, s.code))[:limit]
    for s in top:
        table.add_row(
            s.code, f"{s.hits:,}", format_ms(s.first_ms), format_ms(s.last_ms), str(len(s.daily))
        )
    out.print(table)
    if len(snaps) > len(top):
        out.print(f"({len(snaps) - len(top):,} more codes; --limit or --json shows them)")


@cli.command()
@data_option
@json_option
@reports_errors
def status(target: Target, as_json: bool) -> None:
    """Per partition: watermark, log end, lag, epoch, last flush, totals."""
    log = open_log(target, create=False)
    store = open_store(target)
    parts = read_status(log, store)
    quarantined = log.quarantined()
    ledger = open_call_ledger(target)
    kv = ledger.totals()
    ledger.close()
    if as_json:
        print_json(
            {
                "kv_calls": kv.__dict__,
                "partitions": [
                    {
                        **p.__dict__,
                        "as_of": format_ms(p.as_of_ms),
                        "last_flush": format_ms(p.last_flush_ms),
                    }
                    for p in parts
                ],
                "quarantined": quarantined,
            }
        )
        return
    table = Table(title=f"BH2 status ({quarantined:,} lines quarantined at ingest)")
    table.add_column("")
    for p in parts:
        table.add_column(f"partition {p.partition}", justify="right")
    rows = {
        "watermark": [f"{p.watermark:,}" for p in parts],
        "log end": [f"{p.log_end:,}" for p in parts],
        "lag": [f"{p.lag_hits:,} hits, {format_lag(p.lag_s)}" for p in parts],
        "epoch": [str(p.epoch) for p in parts],
        "as of": [format_ms(p.as_of_ms) or "-" for p in parts],
        "last flush": [format_ms(p.last_flush_ms) or "-" for p in parts],
        "batches": [f"{p.batches:,}" for p in parts],
        "hits counted": [f"{p.hits:,}" for p in parts],
        "KV writes": [f"{p.kv_writes:,}" for p in parts],
        "keys rewritten < 1 s": [f"{p.key_rate_violations:,}" for p in parts],
    }
    for name, values in rows.items():
        table.add_row(name, *values)
    out.print(table)
    if kv.reads or kv.writes:
        out.print(
            f"server KV calls (remote-KV model): {kv.reads:,} reads, {kv.writes:,} writes, "
            f"{kv.key_rate_violations:,} writes to a key within 1 s of the last, "
            f"{kv.failures:,} failures"
        )


@cli.command()
@data_option
@reports_errors
def verify(target: Target) -> None:
    """Recount the log and compare with the stats; exit 0 only if identical.

    Hits up to each partition's watermark are compared (those the contract says
    are counted exactly once); hits past it are reported as lag.
    """
    log = open_log(target, create=False)
    store = open_store(target)
    diffs = differences(log, store)
    parts = read_status(log, store)
    counted = sum(p.watermark for p in parts)
    lag = sum(p.lag_hits for p in parts)
    if diffs:
        for d in diffs[:200]:
            out.print(d)
        if len(diffs) > 200:
            out.print(f"... and {len(diffs) - 200:,} more")
        err.print(f"[bold red]verify failed:[/] {len(diffs):,} differences", markup=True)
        sys.exit(1)
    out.print(
        f"OK: stats match a recount of the log up to the watermark "
        f"(offsets up to {counted:,}; {lag:,} hits not aggregated yet)"
    )


@cli.command()
@click.option("--hits", "n", type=int, default=100_000, show_default=True)
@click.option("--codes", type=int, default=10_000, show_default=True)
@click.option(
    "--zipf",
    "s",
    type=float,
    default=1.1,
    show_default=True,
    help="Zipf exponent over the codes (0 = uniform).",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--out", "out_file", type=click.File("wb"), default="-", show_default=True)
def sample(n: int, codes: int, s: float, seed: int, out_file: Any) -> None:
    """Write N sample hits as NDJSON (for demos and benchmarks)."""
    write_sample(out_file, n, codes=codes, s=s, seed=seed)


cli.add_command(cost)

if __name__ == "__main__":
    main()
