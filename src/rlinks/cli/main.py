"""`rlinks`: the link shortener's own commands."""

from __future__ import annotations

import io

import click

from rlinks import __version__
from rlinks.backends import Target
from rlinks.cli.bh2 import aggregate_now, ingest_stream, print_stats
from rlinks.cli.common import data_option, err, reports_errors
from rlinks.cli.links import links
from rlinks.cli.serve import serve
from rlinks.sample import write_sample
from rlinks.settings import Settings
from rlinks.timefmt import format_lag


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rlinks")
def cli() -> None:
    """rlinks: a link shortener with exact, batched click stats (BH2).

    The BH2 job itself is `rlinks-bh2` (ingest, run, stats, status, verify).
    """


def main() -> None:
    cli(prog_name="rlinks")


cli.add_command(links)
cli.add_command(serve)


@cli.command()
@data_option
@click.option(
    "--hits",
    "n",
    type=int,
    default=200_000,
    show_default=True,
    help="How many sample hits to generate (Zipf s=1.1 over --codes codes).",
)
@click.option("--codes", type=int, default=10_000, show_default=True)
@click.option("--top", type=int, default=10, show_default=True, help="Rows of stats to show.")
@reports_errors
def demo(target: Target, n: int, codes: int, top: int) -> None:
    """Generate sample hits, append them to the HITS log, run BH2, show stats.

    Running it again appends a new sample: the stats grow by exactly --hits.
    """
    buf = io.BytesIO()
    write_sample(buf, n, codes=codes)
    buf.seek(0)
    err.print(f"generated {n:,} sample hits over {codes:,} codes; ingesting into {target}")
    ingest_stream(target, buf, "sample", quiet=True)
    counters = aggregate_now(Settings.build(target.data_dir, backend=target.url))
    err.print(f"BH2 done: lag {counters.lag_hits:,} hits ({format_lag(counters.lag_s)})")
    print_stats(target, code=None, limit=top, as_json=False)
