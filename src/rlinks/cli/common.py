"""What every rlinks command shares: the data folder option, errors, output."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click
import msgspec
from rich.console import Console

from rlinks.backends import ENV_BACKEND, ENV_DATA, Target
from rlinks.errors import ConfigError, RlinksError
from rlinks.redisdb import transient_errors

P = ParamSpec("P")
R = TypeVar("R")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def data_option(fn: Callable[..., R]) -> Callable[..., R]:
    """`--data DIR` or `--backend URL`, given to the command as `target` (a Target)."""

    @click.option(
        "--data",
        "data_dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar=ENV_DATA,
        show_envvar=True,
        help="Data folder of the embedded store (hits.db, kv.db): the default backend.",
    )
    @click.option(
        "--backend",
        "backend_url",
        metavar="URL",
        envvar=ENV_BACKEND,
        show_envvar=True,
        help="Redis or Redis Cluster instead of a data folder: redis://host:port/db "
        "(or rediss://). A cluster is detected from the server.",
    )
    @functools.wraps(fn)
    def wrapper(*args: Any, data_dir: Path | None, backend_url: str | None, **kwargs: Any) -> R:
        if data_dir is not None and backend_url is not None:
            # A flag beats a setting inherited from the environment.
            ctx = click.get_current_context()
            env = click.core.ParameterSource.ENVIRONMENT
            if ctx.get_parameter_source("data_dir") is env:
                data_dir = None
            elif ctx.get_parameter_source("backend_url") is env:
                backend_url = None
            else:
                raise ConfigError("give --data DIR or --backend URL, not both")
        return fn(*args, target=Target.of(data_dir, backend_url), **kwargs)

    return reports_errors(wrapper)


partitions_option = click.option(
    "--partitions",
    type=click.IntRange(1, 1024),
    default=1,
    show_default=True,
    help="Partitions of the HITS log when this command makes it (hash(code) mod P); "
    "an existing log keeps its own.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def reports_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Print an RlinksError as one clear line and exit with its code; a store
    lost mid-command (Redis restarting, a network cut) too, with exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except RlinksError as e:
            err.print(f"[bold red]error:[/] {e}", markup=True, soft_wrap=True)
            sys.exit(e.exit_code)
        except transient_errors() as e:
            err.print(
                f"[bold red]error:[/] the store stopped answering ({e}); nothing past "
                "the last committed step was kept; run the command again",
                markup=True,
                soft_wrap=True,
            )
            sys.exit(2)

    return wrapper


def print_json(value: Any) -> None:
    sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(value), indent=2) + b"\n")
    sys.stdout.flush()
