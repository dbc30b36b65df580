"""The route store on Redis (or Redis Cluster).

Every key carries the hash tag `{routes}`, so all of them live in one cluster
slot and one script may touch any of them:
  `r:<code>`    string: the route as JSON (schema v1, as in SQLite); `get` is one GET
  `index`       sorted set of codes, all scores 0, so ZRANGEBYLEX walks them in code
                order and a prefix is a range
  `audit`       stream of changes: fields id, at_ms, actor, action, code, detail (JSON)
  `audit:id`    counter behind the records' integer ids (stream ids are not integers)
  `a:<code>`    sorted set: that code's audit stream ids scored by record id, so the
                history of one code is not a scan of the whole stream

Python reads the route, decides the change exactly as `SqliteRouteStore` does,
then one script (`_APPLY`) writes it: it first checks that every route it
changes still holds the JSON that was read, and only then writes the routes,
the index and one audit record per change. A route changed in between makes
the script write nothing, and the change is decided again on a fresh read
(optimistic locking, which needs no lock and works on a cluster).
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, cast

import msgspec

from rlinks.errors import ConfigError, RlinksError, RouteNotFoundError
from rlinks.redisdb import NS, Client, connect, register
from rlinks.routes.model import Route, Status, decode_route, encode_route, route_to_dict, stamp
from rlinks.routes.store import (
    _DETAIL,
    _JSON,
    IMPORT_CHUNK,
    Action,
    AuditRecord,
    ImportCounts,
    _changes,
    _check_actor,
    _check_limit,
)
from rlinks.routes.validate import validate_code, validate_route
from rlinks.timefmt import now_ms

TAG = f"{NS}:{{routes}}"
INDEX = f"{TAG}:index"
AUDIT = f"{TAG}:audit"
AUDIT_ID = f"{TAG}:audit:id"
# Most codes `list` reads per round trip.
_PAGE = 1000
# Fresh reads before a change gives up: each lost race means another writer
# changed the same route, so running out takes a writer hammering one code.
_TRIES = 100


def route_key(code: str) -> str:
    return f"{TAG}:r:{code}"


def audit_key(code: str) -> str:
    return f"{TAG}:a:{code}"


# KEYS: index, audit stream, audit id counter, then per code changed: route, a:<code>.
# ARGV: n codes, the JSON each held when read ('' = none), m changes, then per
#       change: code number (1..n), code, new JSON ('' = delete), at_ms, actor,
#       action, detail.
# Returns 0, or the number of the first code whose route changed since (nothing written).
_APPLY = """
local n = tonumber(ARGV[1])
for i = 1, n do
  if (redis.call('GET', KEYS[2 + 2 * i]) or '') ~= ARGV[1 + i] then return i end
end
local at = n + 3
for c = 1, tonumber(ARGV[n + 2]) do
  local i, code, route = tonumber(ARGV[at]), ARGV[at + 1], ARGV[at + 2]
  if route == '' then
    redis.call('DEL', KEYS[2 + 2 * i])
    redis.call('ZREM', KEYS[1], code)
  else
    redis.call('SET', KEYS[2 + 2 * i], route)
    redis.call('ZADD', KEYS[1], 0, code)
  end
  local id = redis.call('INCR', KEYS[3])
  local sid = redis.call('XADD', KEYS[2], '*', 'id', id, 'at_ms', ARGV[at + 3],
    'actor', ARGV[at + 4], 'action', ARGV[at + 5], 'code', code, 'detail', ARGV[at + 6])
  redis.call('ZADD', KEYS[3 + 2 * i], id, sid)
  at = at + 7
end
return 0
"""

# KEYS: audit stream, a:<code>. ARGV: limit. That code's newest records, newest first.
_AUDIT_OF = """
local out = {}
for _, sid in ipairs(redis.call('ZREVRANGE', KEYS[2], 0, tonumber(ARGV[1]) - 1)) do
  local entry = redis.call('XRANGE', KEYS[1], sid, sid)
  if entry[1] then out[#out + 1] = entry[1] end
end
return out
"""


class _Change(NamedTuple):
    """One decided change: the route to store (None: delete) and its audit record."""

    code: str
    route: Route | None
    action: Action
    detail: dict[str, Any]


class RedisRouteStore:
    """`RouteStore` on Redis; any number of processes may share it."""

    def __init__(self, url_or_client: str | Client) -> None:
        r = connect(url_or_client) if isinstance(url_or_client, str) else url_or_client
        self._r: Any = r
        self._apply = register(r, _APPLY)
        self._audit_of = register(r, _AUDIT_OF)

    # -- reading ---------------------------------------------------------------------

    def get(self, code: str) -> Route | None:
        # The redirect path's only read: one GET.
        raw = self._r.get(route_key(code))
        return None if raw is None else _decode(code, raw)

    def list(
        self, prefix: str | None = None, limit: int = 50, include_disabled: bool = False
    ) -> builtins.list[Route]:
        _check_limit(limit)
        # Codes are ASCII, so every code starting with `prefix` sorts below prefix + 0xff.
        low = b"[" + prefix.encode() if prefix else b"-"
        high = b"(" + prefix.encode() + b"\xff" if prefix else b"+"
        # Disabled routes are dropped after reading, so read a few more than asked.
        page = min(limit if include_disabled else limit + 16, _PAGE)
        out: builtins.list[Route] = []
        while len(out) < limit:
            codes = self._r.zrangebylex(INDEX, low, high, start=0, num=page)
            if not codes:
                break
            raws = self._r.mget([route_key(c.decode()) for c in codes])
            for code, raw in zip(codes, raws, strict=True):
                if raw is None:  # deleted since the index was read
                    continue
                route = _decode(code.decode(), raw)
                if include_disabled or route.active:
                    out.append(route)
            if len(codes) < page:
                break
            low = b"(" + codes[-1]
        return out[:limit]

    def audit_log(self, code: str | None = None, limit: int = 100) -> builtins.list[AuditRecord]:
        _check_limit(limit)
        if code is None:
            entries = self._r.xrevrange(AUDIT, count=limit)
        else:
            # The script answers in raw form: field and value alternate.
            entries = [
                (sid, dict(zip(flat[::2], flat[1::2], strict=True)))
                for sid, flat in self._audit_of(keys=[AUDIT, audit_key(code)], args=[limit])
            ]
        return [_record(fields) for _sid, fields in entries]

    def feed_position(self) -> str:
        # Stream ids grow in commit order: each change is one script run.
        last = self._r.xrevrange(AUDIT, count=1)
        return last[0][0].decode() if last else "0-0"

    def changed_since(self, position: str, limit: int = 1000) -> tuple[str, builtins.list[str]]:
        _check_limit(limit)
        entries = self._r.xrange(AUDIT, min=f"({position}", count=limit)
        if not entries:
            return position, []
        return entries[-1][0].decode(), [fields[b"code"].decode() for _, fields in entries]

    # -- changing --------------------------------------------------------------------

    def put(self, route: Route, actor: str) -> Route:
        route = validate_route(route)
        _check_actor(actor)
        for _ in range(_TRIES):
            raw, old = self._read(route.code)
            at = now_ms()
            new, change = _decide(route, old, actor, at)
            if change is None or self._commit({route.code: raw}, [change], actor, at):
                return new
        raise _contended(f"the route {route.code!r}")

    def put_many(
        self, routes: Iterable[Route], actor: str, *, chunk: int = IMPORT_CHUNK
    ) -> ImportCounts:
        """Create or update many routes, `chunk` per script run, each audited.

        The same contract as `SqliteRouteStore.put_many`: everything is validated
        before the first write; an existing route keeps its status and creation
        stamps; an identical one is not written; of two with one code the later
        wins; a failure mid-way keeps the chunks already written. Each chunk is
        one MGET and one script run, so a large import is a few round trips per
        thousand routes.
        """
        _check_actor(actor)
        if chunk < 1:
            raise ConfigError(f"the chunk must be at least 1 route, got {chunk}")
        checked = [validate_route(r) for r in routes]
        counts = ImportCounts()
        for lo in range(0, len(checked), chunk):
            done = self._put_chunk(checked[lo : lo + chunk], actor)
            counts.created += done.created
            counts.updated += done.updated
            counts.unchanged += done.unchanged
        return counts

    def disable(self, code: str, actor: str) -> Route:
        return self._set_status(code, actor, "disabled")

    def enable(self, code: str, actor: str) -> Route:
        return self._set_status(code, actor, "active")

    def delete(self, code: str, actor: str) -> bool:
        _check_actor(actor)
        for _ in range(_TRIES):
            raw, old = self._read(code)
            if old is None:
                return False
            at = now_ms()
            change = _Change(code, None, "delete", {"route": route_to_dict(old)})
            if self._commit({code: raw}, [change], actor, at):
                return True
        raise _contended(f"the route {code!r}")

    def close(self) -> None:
        self._r.close()

    # -- inside ----------------------------------------------------------------------

    def _read(self, code: str) -> tuple[bytes | None, Route | None]:
        """The stored JSON (what `_commit` checks against) and the route it holds."""
        raw = self._r.get(route_key(code))
        return raw, None if raw is None else _decode(code, raw)

    def _put_chunk(self, drafts: Sequence[Route], actor: str) -> ImportCounts:
        codes = list(dict.fromkeys(d.code for d in drafts))
        for _ in range(_TRIES):
            raws = dict(zip(codes, self._r.mget([route_key(c) for c in codes]), strict=True))
            current = {c: None if raw is None else _decode(c, raw) for c, raw in raws.items()}
            at = now_ms()
            counts = ImportCounts()
            changes: list[_Change] = []
            for draft in drafts:
                # Later drafts of one code see the earlier ones, as in one transaction.
                old = current[draft.code]
                kept = draft if old is None else draft.replace(status=old.status)
                current[draft.code], change = _decide(kept, old, actor, at)
                counts.add(None if change is None else change.action)
                if change is not None:
                    changes.append(change)
            if not changes or self._commit(raws, changes, actor, at):
                return counts
        raise _contended(f"one of {len(codes)} routes (the first {codes[0]!r})")

    def _set_status(self, code: str, actor: str, status: Status) -> Route:
        validate_code(code, allow_reserved=True)
        _check_actor(actor)
        for _ in range(_TRIES):
            raw, old = self._read(code)
            if old is None:
                raise RouteNotFoundError(code)
            if old.status == status:
                return old
            at = now_ms()
            new = old.replace(status=status, updated_at=stamp(at))
            action: Action = "disable" if status == "disabled" else "enable"
            detail = {"changes": {"status": {"from": old.status, "to": status}}}
            if self._commit({code: raw}, [_Change(code, new, action, detail)], actor, at):
                return new
        raise _contended(f"the route {code!r}")

    def _commit(
        self, read: dict[str, bytes | None], changes: Sequence[_Change], actor: str, at: int
    ) -> bool:
        """Write `changes` if every route in `read` still holds what was read then;
        False (nothing written) if one was changed by someone else meanwhile."""
        number = {code: i for i, code in enumerate(read, start=1)}
        keys = [INDEX, AUDIT, AUDIT_ID]
        args: builtins.list[Any] = [len(read)]
        for code, raw in read.items():
            keys += [route_key(code), audit_key(code)]
            args.append(b"" if raw is None else raw)
        args.append(len(changes))
        for c in changes:
            new = b"" if c.route is None else encode_route(c.route)
            args += [number[c.code], c.code, new, at, actor, c.action, _JSON.encode(c.detail)]
        return int(self._apply(keys=keys, args=args)) == 0


def _decide(route: Route, old: Route | None, actor: str, at: int) -> tuple[Route, _Change | None]:
    """What writing a validated `route` over `old` stores, and the change to log
    (None: identical, so nothing is written). The rules of `SqliteRouteStore.put`."""
    if old is None:
        new = route.replace(created_at=stamp(at), updated_at=stamp(at), created_by=actor)
        return new, _Change(new.code, new, "create", {"route": route_to_dict(new)})
    changes = _changes(old, route)
    if not changes:
        return old, None
    new = route.replace(created_at=old.created_at, created_by=old.created_by, updated_at=stamp(at))
    return new, _Change(new.code, new, "update", {"changes": changes})


def _record(fields: dict[bytes, bytes]) -> AuditRecord:
    return AuditRecord(
        id=int(fields[b"id"]),
        at_ms=int(fields[b"at_ms"]),
        actor=fields[b"actor"].decode(),
        action=cast(Action, fields[b"action"].decode()),
        code=fields[b"code"].decode(),
        detail=_DETAIL.decode(fields[b"detail"]),
    )


def _decode(code: str, data: bytes) -> Route:
    try:
        return decode_route(data)
    except msgspec.DecodeError as e:
        raise ConfigError(
            f"Redis holds a route {code!r} this rlinks cannot read ({e}): "
            "was it written by a newer version?"
        ) from e


def _contended(what: str) -> RlinksError:
    return RlinksError(
        f"{what} kept changing under other writers ({_TRIES} tries): "
        "this call wrote nothing; try again"
    )
