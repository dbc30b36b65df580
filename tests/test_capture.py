"""Hit capture (rlinks.server.capture): what a worker keeps of a redirect, and
the hit its log writer makes of it.

Covers which headers and address a `Capture` keeps (and that it keeps nothing
else), X-Forwarded-For with and without a trusted proxy, the cuts on over-long
values, the msgpack trip from worker to writer, and the hit's privacy rules:
address prefixes, keyed user-agent hashes, control characters and UUIDv7 ids.
"""

from __future__ import annotations

import uuid

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlinks.hits import REFERRER_CAP
from rlinks.server.capture import (
    COUNTRY_BYTES,
    REFERRER_BYTES,
    UA_BYTES,
    Capture,
    CaptureConfig,
    HitMaker,
    capture,
)

NOW = 1_795_903_200_123
UA = b"Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"
COOKIE = b"session=s3cr3t-c00kie-value"
CF = CaptureConfig(country_header=b"cf-ipcountry")
PROXIED = CaptureConfig(country_header=b"cf-ipcountry", trust_proxy=True)
MAKER = HitMaker(b"test-salt")


def request(*extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    """Request headers as uvicorn gives them, with `extra` appended."""
    return [
        (b"host", b"s.example"),
        (b"user-agent", UA),
        (b"cookie", COOKIE),
        (b"referer", b"https://ref.example/page"),
        (b"cf-ipcountry", b"de"),
        (b"accept", b"*/*"),
        *extra,
    ]


def test_capture_keeps_only_the_three_headers_and_the_peer() -> None:
    c = capture("abc", request(), ("192.0.2.10", 51234), CF, NOW)
    assert c == Capture("abc", NOW, "192.0.2.10", UA, b"https://ref.example/page", b"de")
    wire = msgspec.msgpack.encode(c)
    assert COOKIE not in wire
    assert b"s.example" not in wire


def test_capture_without_client_or_country_header() -> None:
    c = capture("abc", request(), None, CaptureConfig(), NOW)
    assert c.address is None
    assert c.country == b""
    assert MAKER.hit(c).ip_prefix is None


def test_forwarded_for_ignored_without_trust_proxy() -> None:
    headers = request((b"x-forwarded-for", b"1.2.3.4, 198.51.100.7"))
    assert capture("abc", headers, ("192.0.2.10", 1), CF, NOW).address == "192.0.2.10"


def test_forwarded_for_last_entry_with_trust_proxy() -> None:
    headers = request((b"x-forwarded-for", b"1.2.3.4,  198.51.100.7 "))
    c = capture("abc", headers, ("192.0.2.10", 1), PROXIED, NOW)
    assert c.address == "198.51.100.7"
    assert MAKER.hit(c).ip_prefix == "198.51.100.0/24"


def test_absurd_forwarded_for_is_cut_and_unparsed() -> None:
    headers = request((b"x-forwarded-for", b"1.2.3.4, " + b"9" * 100_000))
    c = capture("abc", headers, ("192.0.2.10", 1), PROXIED, NOW)
    assert c.address is not None
    assert len(c.address) <= 64
    assert MAKER.hit(c).ip_prefix is None


def test_over_long_values_are_cut() -> None:
    headers = [
        (b"user-agent", b"u" * 10_000),
        (b"referer", b"https://x.example/" + b"r" * 10_000),
        (b"cf-ipcountry", b"c" * 1_000),
    ]
    c = capture("abc", headers, ("192.0.2.10", 1), CF, NOW)
    assert len(c.user_agent) == UA_BYTES
    assert len(c.referrer) == REFERRER_BYTES
    assert len(c.country) == COUNTRY_BYTES
    hit = MAKER.hit(c)
    assert hit.referrer is not None and len(hit.referrer) == REFERRER_CAP
    assert hit.country == "C" * 8


def test_captures_survive_msgpack_round_trip() -> None:
    group = [
        capture("abc", request(), ("192.0.2.10", 1), CF, NOW),
        capture("x-1", [], None, CaptureConfig(), NOW + 1),
        capture("y", [(b"referer", b"\xff\xfe\x00")], ("2001:db8::1", 2), CF, NOW + 2),
    ]
    decoded = msgspec.msgpack.Decoder(list[Capture]).decode(msgspec.msgpack.encode(group))
    assert decoded == group


@pytest.mark.parametrize(
    ("address", "prefix"),
    [
        ("203.0.113.77", "203.0.113.0/24"),
        ("2001:db8:abcd:12::1", "2001:db8:abcd::/48"),
        ("::ffff:192.0.2.9", "192.0.2.0/24"),
        ("not-an-ip", None),
        ("", None),
        (None, None),
    ],
)
def test_ip_prefix(address: str | None, prefix: str | None) -> None:
    assert MAKER.hit(Capture("abc", NOW, address)).ip_prefix == prefix


def test_ua_hash_is_keyed_and_opaque() -> None:
    c = Capture("abc", NOW, user_agent=UA)
    first = MAKER.hit(c).ua_hash
    assert first is not None
    assert len(first) == 16 and int(first, 16) >= 0
    assert MAKER.hit(c).ua_hash == first
    assert HitMaker(b"test-salt").hit(c).ua_hash == first
    assert HitMaker(b"other-salt").hit(c).ua_hash != first
    assert MAKER.hit(Capture("abc", NOW, user_agent=b"curl/8.5.0")).ua_hash != first
    assert "Mozilla" not in first
    assert MAKER.hit(Capture("abc", NOW)).ua_hash is None


def test_control_characters_are_removed() -> None:
    headers = [
        (b"referer", b'https://x.example/\r\n{"forged":1}\x00\x7f'),
        (b"cf-ipcountry", b"d\ne\x85"),
    ]
    hit = MAKER.hit(capture("abc", headers, None, CF, NOW))
    assert hit.referrer == 'https://x.example/{"forged":1}'
    assert hit.country == "DE"


def test_non_utf8_referrer_does_not_raise() -> None:
    hit = MAKER.hit(capture("abc", [(b"referer", b"https://x.example/\xff\xc3")], None, CF, NOW))
    assert hit.referrer is not None
    assert hit.referrer.startswith("https://x.example/")
    assert "\N{REPLACEMENT CHARACTER}" in hit.referrer


def test_empty_header_values_give_none() -> None:
    headers = [(b"user-agent", b""), (b"referer", b""), (b"cf-ipcountry", b"\r\n")]
    hit = MAKER.hit(capture("abc", headers, None, CF, NOW))
    assert (hit.ua_hash, hit.referrer, hit.country) == (None, None, None)
    assert (hit.code, hit.ts_ms) == ("abc", NOW)


def test_hits_get_distinct_ordered_uuid7_ids() -> None:
    captures = [Capture("abc", NOW + i) for i in range(1000)]
    hits = MAKER.hits(captures)
    ids = [h.id for h in hits]
    assert len(set(ids)) == 1000
    assert all(uuid.UUID(i).version == 7 for i in ids)
    assert ids == sorted(ids)
    assert [h.ts_ms for h in hits] == [c.ts_ms for c in captures]


HEADER_NAMES = [b"user-agent", b"referer", b"cf-ipcountry", b"x-forwarded-for", b"cookie"]


@settings(max_examples=200, deadline=None)
@given(
    headers=st.lists(
        st.tuples(st.sampled_from(HEADER_NAMES), st.binary(max_size=4096)), max_size=8
    ),
    address=st.none() | st.text(max_size=80),
    trust_proxy=st.booleans(),
)
def test_capture_and_hit_never_raise(
    headers: list[tuple[bytes, bytes]], address: str | None, trust_proxy: bool
) -> None:
    cfg = CaptureConfig(country_header=b"cf-ipcountry", trust_proxy=trust_proxy)
    client = None if address is None else (address, 443)
    c = capture("abc", headers, client, cfg, NOW)
    assert len(c.user_agent) <= UA_BYTES
    assert len(c.referrer) <= REFERRER_BYTES
    assert len(c.country) <= COUNTRY_BYTES
    assert msgspec.msgpack.Decoder(Capture).decode(msgspec.msgpack.encode(c)) == c
    hit = MAKER.hit(c)
    msgspec.msgpack.encode(hit)
    assert hit.referrer is None or len(hit.referrer) <= REFERRER_CAP
    assert hit.country is None or len(hit.country) <= 8
