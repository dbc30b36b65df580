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

from rlinks.errors import RlinksError
from rlinks.settings import ENV_DATA

P = ParamSpec("P")
R = TypeVar("R")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

data_option = click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=ENV_DATA,
    show_envvar=True,
    required=True,
    help="Data folder of the embedded store (hits.db, kv.db).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def reports_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Print an RlinksError as one clear line and exit with its code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except RlinksError as e:
            err.print(f"[bold red]error:[/] {e}", markup=True, soft_wrap=True)
            sys.exit(e.exit_code)

    return wrapper


def print_json(value: Any) -> None:
    sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(value), indent=2) + b"\n")
    sys.stdout.flush()
