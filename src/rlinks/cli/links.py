"""`rlinks links`: create, inspect and retire short links; every change is audited."""

from __future__ import annotations

import getpass
import os
from contextlib import closing
from typing import Any, BinaryIO

import click
import msgspec
from rich.table import Table
from rich.text import Text

from rlinks.backends import Target, open_log, open_routes, open_store
from rlinks.cli.common import data_option, err, json_option, out, print_json, reports_errors
from rlinks.errors import ConfigError, InvalidRouteError, RouteNotFoundError
from rlinks.routes.hosts import public_host_key
from rlinks.routes.model import Meta, Route, Rules, route_to_dict
from rlinks.routes.store import AuditRecord
from rlinks.routes.validate import (
    DEFAULT_PUBLIC_HOSTS,
    validate_code,
    validate_expires,
    validate_route,
)
from rlinks.status import code_stats
from rlinks.timefmt import format_lag, format_ms, now_ms

ENV_ACTOR = "RLINKS_ACTOR"
ENV_PUBLIC_HOSTS = "RLINKS_PUBLIC_HOSTS"


class PublicHost(click.types.StringParamType):
    """A host name (optionally :port) that is ours; from the environment, comma-separated."""

    name = "host"

    def split_envvar_value(self, rv: str) -> list[str]:
        return [part.strip() for part in rv.split(",") if part.strip()]

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        try:
            public_host_key(text)
        except ConfigError as e:
            self.fail(str(e), param, ctx)
        return text


public_hosts_option = click.option(
    "--public-host",
    "public_hosts",
    type=PublicHost(),
    multiple=True,
    envvar=ENV_PUBLIC_HOSTS,
    show_envvar=True,
    default=DEFAULT_PUBLIC_HOSTS,
    show_default=True,
    help="A host this shortener is served on (repeatable; the variable is comma-separated). "
    "A target on one of them is refused as a redirect loop; without a port, every port "
    "of that host counts.",
)
actor_option = click.option(
    "--actor",
    envvar=ENV_ACTOR,
    show_envvar=True,
    help="Who is making the change, for the audit log (default: your OS user name).",
)
code_argument = click.argument("code")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def links() -> None:
    """Manage short links: CODE redirects to a target URL.

    Codes are 1 to 64 characters from a-z, 0-9 and '-' (api, admin, www, healthz
    and metrics are reserved). Targets are absolute https:// URLs unless
    --no-https. Every change is recorded with its actor in an audit log.

    \b
    Typical use:
      rlinks links set --data ./data promo https://example.com/spring-sale
      rlinks links get --data ./data promo
      rlinks links stats --data ./data promo
      rlinks links import --data ./data links.ndjson
    """


@links.command("set")
@code_argument
@click.argument("url")
@click.option("--no-https", is_flag=True, help="Allow a plain http:// target.")
@click.option("--allow-loop", is_flag=True, help="Allow a target on one of our own public hosts.")
@click.option(
    "--expires",
    metavar="ISO",
    help="From this instant on the link answers 410 Gone "
    "(RFC 3339 with an offset, e.g. 2026-12-31T23:59:59Z).",
)
@click.option("--note", help="A note for people; not shown to visitors.")
@click.option("--tag", "tags", multiple=True, help="A tag (repeat the option for several).")
@public_hosts_option
@actor_option
@data_option
@json_option
@reports_errors
def set_(
    code: str,
    url: str,
    no_https: bool,
    allow_loop: bool,
    expires: str | None,
    note: str | None,
    tags: tuple[str, ...],
    public_hosts: tuple[str, ...],
    actor: str | None,
    target: Target,
    as_json: bool,
) -> None:
    """Create the link CODE -> URL, or replace what CODE points to.

    Setting an existing code replaces its target, rules, note and tags with what
    this command says (options left out take their defaults); its creation time
    and creator, and whether it is disabled, are kept. The audit log records
    exactly what changed. Setting identical values changes nothing.
    """
    rules = Rules(
        https_only=not no_https,
        no_loop=not allow_loop,
        expires_at=None if expires is None else validate_expires(expires),
    )
    draft = validate_route(
        Route.new(code, url, rules=rules, meta=Meta(notes=note, tags=list(tags))),
        public_hosts=public_hosts,
    )
    who = _actor(actor)
    with closing(open_routes(target)) as store:
        old = store.get(code)
        route = store.put(draft.replace(status=old.status if old else "active"), who)
    if as_json:
        print_json(route_to_dict(route))
    if old is None:
        _say(f"created {code} -> {route.target}")
    else:
        changed = [f for f in ("target", "rules", "meta") if getattr(old, f) != getattr(route, f)]
        _say(f"updated {code}: {', '.join(changed)}" if changed else f"{code} unchanged")
    if route.status != "active":
        _say(f"note: {code} is disabled; `rlinks links enable {code}` turns it back on")
    expires_ms = route.expires_ms
    if expires_ms is not None and expires_ms <= now_ms():
        _say(f"note: {code} expired at {route.rules.expires_at}; it answers 410 Gone")


class _ImportLine(msgspec.Struct, forbid_unknown_fields=True):
    """One line of `rlinks links import`: what `links set` can say, as JSON."""

    code: str
    target: str
    rules: Rules = msgspec.field(default_factory=Rules)
    meta: Meta = msgspec.field(default_factory=Meta)


_IMPORT_LINE = msgspec.json.Decoder(_ImportLine)


@links.command("import")
@click.argument("file", type=click.File("rb"))
@public_hosts_option
@actor_option
@data_option
@json_option
@reports_errors
def import_(
    file: BinaryIO, public_hosts: tuple[str, ...], actor: str | None, target: Target, as_json: bool
) -> None:
    """Create or replace many links from FILE ("-" = stdin), one JSON object a line.

    \b
    {"code": "promo", "target": "https://example.com/sale",
     "rules": {"https_only": true, "no_loop": true, "expires_at": null},
     "meta": {"notes": "spring", "tags": ["campaign"]}}

    `rules` and `meta` are optional. Every line is checked as `links set` checks
    its arguments, and a bad line (or a code given twice) stops the import
    before anything is written. Links are written a few thousand per
    transaction, each with its own audit record; an existing link keeps its
    creation stamps and whether it is disabled.
    """
    drafts = _read_import(file, public_hosts)
    with closing(open_routes(target)) as store:
        counts = store.put_many(drafts, _actor(actor))
    if as_json:
        print_json({"routes": len(drafts), **counts.__dict__})
    _say(
        f"imported {len(drafts):,} links from {file.name}: {counts.created:,} created, "
        f"{counts.updated:,} updated, {counts.unchanged:,} unchanged"
    )


def _read_import(file: BinaryIO, public_hosts: tuple[str, ...]) -> list[Route]:
    """Every line of an import as a validated draft route; the first bad line
    is an error naming it."""
    drafts: list[Route] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(file, start=1):
        if not raw.strip():
            continue
        try:
            line = _IMPORT_LINE.decode(raw)
            draft = validate_route(
                Route.new(line.code, line.target, rules=line.rules, meta=line.meta),
                public_hosts=public_hosts,
            )
        except msgspec.DecodeError as e:
            raise ConfigError(f"line {number} of {file.name} is not a link: {e}") from e
        except InvalidRouteError as e:
            raise InvalidRouteError(e.field, f"line {number} of {file.name}: {e}") from e
        if draft.code in seen:
            raise ConfigError(
                f"line {number} of {file.name}: the code {draft.code!r} is already on line "
                f"{seen[draft.code]}; give each code once"
            )
        seen[draft.code] = number
        drafts.append(draft)
    return drafts


@links.command()
@code_argument
@data_option
@json_option
@reports_errors
def get(code: str, target: Target, as_json: bool) -> None:
    """Show the link CODE: target, status, rules, note, tags and stamps."""
    route = _existing(target, code)
    if as_json:
        print_json(route_to_dict(route))
        return
    r = route.rules
    rows = {
        "code": route.code,
        "target": route.target,
        "status": route.status,
        "https only": _yes(r.https_only),
        "no loop": _yes(r.no_loop),
        "expires": r.expires_at or "never",
        "note": route.meta.notes or "-",
        "tags": ", ".join(route.meta.tags) or "-",
        "created": f"{route.created_at} by {route.created_by}",
        "updated": route.updated_at,
    }
    for name, value in rows.items():
        click.echo(f"{name:<11} {value}")


@links.command("list")
@click.option("--prefix", help="Only codes that start with this.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="At most this many links, in code order.",
)
@click.option("--show-disabled", is_flag=True, help="Include disabled links.")
@data_option
@json_option
@reports_errors
def list_(
    prefix: str | None, limit: int, show_disabled: bool, target: Target, as_json: bool
) -> None:
    """List links in code order (active ones unless --show-disabled)."""
    with closing(open_routes(target)) as store:
        routes = store.list(prefix=prefix, limit=limit + 1, include_disabled=show_disabled)
    more, routes = len(routes) > limit, routes[:limit]
    if as_json:
        print_json([route_to_dict(r) for r in routes])
        return
    if not routes:
        out.print("no links" + (f" starting with {prefix!r}" if prefix else ""), markup=False)
        return
    table = Table()
    table.add_column("code", overflow="fold")
    if show_disabled:
        table.add_column("status", no_wrap=True)
    table.add_column("target", overflow="fold")
    table.add_column("expires", no_wrap=True)
    table.add_column("tags", overflow="fold")
    table.add_column("updated", no_wrap=True)
    for r in routes:
        cells = [r.code, *([r.status] if show_disabled else []), r.target]
        cells += [r.rules.expires_at or "-", ", ".join(r.meta.tags) or "-", r.updated_at]
        table.add_row(*map(Text, cells))
    out.print(table)
    if more:
        out.print(f"(more links after {routes[-1].code}; raise --limit or use --prefix)")


@links.command()
@code_argument
@actor_option
@data_option
@json_option
@reports_errors
def disable(code: str, actor: str | None, target: Target, as_json: bool) -> None:
    """Make CODE answer 404 Not Found (the route is kept; `enable` undoes it)."""
    _change_status(code, actor, target, as_json, disable=True)


@links.command()
@code_argument
@actor_option
@data_option
@json_option
@reports_errors
def enable(code: str, actor: str | None, target: Target, as_json: bool) -> None:
    """Make a disabled CODE redirect again."""
    _change_status(code, actor, target, as_json, disable=False)


def _change_status(
    code: str, actor: str | None, target: Target, as_json: bool, *, disable: bool
) -> None:
    validate_code(code, allow_reserved=True)
    who = _actor(actor)
    with closing(open_routes(target)) as store:
        before = store.get(code)
        route = store.disable(code, who) if disable else store.enable(code, who)
    if as_json:
        print_json(route_to_dict(route))
    already = before is not None and before.status == route.status
    _say(f"{code} {'was already' if already else 'is now'} {route.status}")


@links.command()
@code_argument
@actor_option
@data_option
@json_option
@reports_errors
def delete(code: str, actor: str | None, target: Target, as_json: bool) -> None:
    """Delete the link CODE for good (the audit log keeps a copy; stats stay)."""
    validate_code(code, allow_reserved=True)
    with closing(open_routes(target)) as store:
        deleted = store.delete(code, _actor(actor))
    if not deleted:
        raise RouteNotFoundError(code)
    if as_json:
        print_json({"code": code, "deleted": True})
    _say(f"deleted {code}")


@links.command()
@code_argument
@data_option
@json_option
@reports_errors
def stats(code: str, target: Target, as_json: bool) -> None:
    """Hits of CODE: total, first and last hit, per UTC day, and how fresh that is.

    Counts come from BH2 (`rlinks-bh2 run`); "as of" is the time of the newest
    hit counted and the lag is what is logged but not counted yet.
    """
    validate_code(code, allow_reserved=True)
    with closing(open_routes(target)) as routes:
        exists = routes.get(code) is not None
    with closing(open_store(target)) as stats_store, closing(open_log(target)) as log:
        fresh = code_stats(log, stats_store, code)
    if not exists:
        _say(f"note: no link has the code {code} (stats outlive a deleted link)")
    if as_json:
        print_json(fresh)
        return
    as_of = f"{fresh['as_of'] or 'never'} (lag {fresh['lag_hits']:,} hits, "
    as_of += f"{format_lag(fresh['lag_s'])})"
    click.echo(f"{code}: {fresh['hits']:,} hits")
    click.echo(f"first hit  {fresh['first_hit'] or '-'}")
    click.echo(f"last hit   {fresh['last_hit'] or '-'}")
    click.echo(f"as of      {as_of}")
    if fresh["daily"]:
        table = Table("day (UTC)", "hits")
        table.columns[1].justify = "right"
        for day, hits in fresh["daily"].items():
            table.add_row(day, f"{hits:,}")
        out.print(table)


@links.command()
@click.argument("code", required=False)
@click.option(
    "--limit", type=click.IntRange(min=1), default=100, show_default=True, help="Newest records."
)
@data_option
@json_option
@reports_errors
def audit(code: str | None, limit: int, target: Target, as_json: bool) -> None:
    """Who changed which link, when and how, newest first (of CODE, or of all links)."""
    if code is not None:
        validate_code(code, allow_reserved=True)
    with closing(open_routes(target)) as store:
        records = store.audit_log(code, limit=limit)
    if as_json:
        print_json([_record_json(r) for r in records])
        return
    if not records:
        out.print("no changes recorded" + (f" for {code}" if code else ""), markup=False)
        return
    table = Table("id", "at", "actor", "action", "code", "detail")
    table.columns[0].justify = "right"
    table.columns[1].no_wrap = True
    table.columns[5].overflow = "fold"
    for r in records:
        table.add_row(
            str(r.id), format_ms(r.at_ms), *map(Text, (r.actor, r.action, r.code, _summary(r)))
        )
    out.print(table)


def _record_json(r: AuditRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "at": format_ms(r.at_ms),
        "actor": r.actor,
        "action": r.action,
        "code": r.code,
        "detail": r.detail,
    }


def _summary(r: AuditRecord) -> str:
    """One line of what a change did."""
    if "route" in r.detail:
        return f"target {r.detail['route'].get('target')}"
    parts = []
    for field, change in r.detail.get("changes", {}).items():
        if isinstance(change.get("to"), str):
            parts.append(f"{field}: {change.get('from')} -> {change['to']}")
        else:
            parts.append(f"{field}: {msgspec.json.encode(change.get('to')).decode()}")
    return "; ".join(parts)


# -- helpers ---------------------------------------------------------------------------


def _existing(target: Target, code: str) -> Route:
    validate_code(code, allow_reserved=True)
    with closing(open_routes(target)) as store:
        route = store.get(code)
    if route is None:
        raise RouteNotFoundError(code)
    return route


def _actor(given: str | None) -> str:
    """--actor, else RLINKS_ACTOR (both via click), else the OS user name."""
    if given:
        return given
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no user name in the environment nor in /etc/passwd
        return f"uid {os.getuid()}"


def _say(message: str) -> None:
    err.print(message, markup=False, soft_wrap=True)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
