"""Hit capture (`rlinks.server.capture.build_hit`): what a redirect's hit keeps.

Covers which headers and address a hit is made from (and that it keeps nothing
else), X-Forwarded-For with and without a trusted proxy, the cuts on
over-long values, and the privacy rules: address prefixes, keyed user-agent
hashes, control characters removed, UUIDv7 ids.
"""

from __future__ import annotations

import uuid

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlinks.hits import REFERRER_CAP, Hit
from rlinks.server.capture import CaptureConfig, build_hit, ip_prefix

NOW = 1_795_903_200_123
UA = b"Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"
COOKIE = b"session=s3cr3t-c00kie-value"
SALT = b"test-salt"
CF = CaptureConfig(salt=SALT, country_header=b"cf-ipcountry")
PROXIED = CaptureConfig(salt=SALT, country_header=b"cf-ipcountry", trust_proxy=True)
PEER = ("192.0.2.10", 51234)


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


def test_a_hit_keeps_the_three_headers_and_the_peers_prefix_only() -> None:
    hit = build_hit("abc", request(), PEER, CF, NOW)
    assert (hit.code, hit.ts_ms, hit.country) == ("abc", NOW, "DE")
    assert hit.referrer == "https://ref.example/page"
    assert hit.ip_prefix == "192.0.2.0/24"
    assert hit.ua_hash is not None and len(hit.ua_hash) == 16
    record = msgspec.msgpack.encode(hit)
    for raw in (COOKIE, b"s.example", UA, b"192.0.2.10"):
        assert raw not in record


def test_no_client_and_no_country_header_give_none() -> None:
    hit = build_hit("abc", request(), None, CaptureConfig(salt=SALT), NOW)
    assert (hit.ip_prefix, hit.country) == (None, None)


def test_forwarded_for_is_ignored_without_trust_proxy() -> None:
    headers = request((b"x-forwarded-for", b"1.2.3.4, 198.51.100.7"))
    assert build_hit("abc", headers, PEER, CF, NOW).ip_prefix == "192.0.2.0/24"


def test_trust_proxy_takes_the_last_forwarded_address() -> None:
    headers = request((b"x-forwarded-for", b"1.2.3.4,  198.51.100.7 "))
    assert build_hit("abc", headers, PEER, PROXIED, NOW).ip_prefix == "198.51.100.0/24"


def test_an_absurd_forwarded_address_gives_no_prefix_and_is_not_cached() -> None:
    """A last entry longer than any address is not parsed (nor kept as a
    cache key: the prefix cache holds up to 65,536 addresses)."""
    before = ip_prefix.cache_info().currsize
    for digit in b"123":
        headers = request((b"x-forwarded-for", b"1.2.3.4, " + bytes([digit]) * 100_000))
        assert build_hit("abc", headers, PEER, PROXIED, NOW).ip_prefix is None
    assert ip_prefix.cache_info().currsize <= before + 1  # None, at most


def test_over_long_values_are_cut() -> None:
    headers = [
        (b"user-agent", b"u" * 10_000),
        (b"referer", b"https://x.example/" + b"r" * 10_000),
        (b"cf-ipcountry", b"c" * 1_000),
    ]
    hit = build_hit("abc", headers, PEER, CF, NOW)
    assert hit.referrer is not None and len(hit.referrer) == REFERRER_CAP
    assert hit.country == "C" * 8
    # the agent is hashed as its first 1,024 bytes: a longer tail changes nothing
    longer = [(b"user-agent", b"u" * 20_000)]
    assert build_hit("abc", longer, PEER, CF, NOW).ua_hash == hit.ua_hash


@pytest.mark.parametrize(
    ("address", "prefix"),
    [
        ("203.0.113.77", "203.0.113.0/24"),
        ("2001:db8:abcd:12::1", "2001:db8:abcd::/48"),
        ("::ffff:192.0.2.9", "192.0.2.0/24"),
        ("not-an-ip", None),
        ("", None),
    ],
)
def test_ip_prefix(address: str, prefix: str | None) -> None:
    assert build_hit("abc", [], (address, 1), CF, NOW).ip_prefix == prefix


def test_the_agent_hash_is_keyed_and_opaque() -> None:
    def agent_hash(agent: bytes, salt: bytes = SALT) -> str | None:
        cfg = CaptureConfig(salt=salt)
        return build_hit("abc", [(b"user-agent", agent)], PEER, cfg, NOW).ua_hash

    first = agent_hash(UA)
    assert first is not None and len(first) == 16 and int(first, 16) >= 0
    assert agent_hash(UA) == first  # countable
    assert agent_hash(UA, b"other-salt") != first  # keyed
    assert agent_hash(b"curl/8.5.0") != first
    assert agent_hash(b"") is None


def test_control_characters_are_removed() -> None:
    headers = [
        (b"referer", b'https://x.example/\r\n{"forged":1}\x00\x7f'),
        (b"cf-ipcountry", b"d\ne\x85"),
    ]
    hit = build_hit("abc", headers, None, CF, NOW)
    assert hit.referrer == 'https://x.example/{"forged":1}'
    assert hit.country == "DE"


def test_a_referrer_that_is_not_utf8_is_replaced_not_refused() -> None:
    hit = build_hit("abc", [(b"referer", b"https://x.example/\xff\xc3")], None, CF, NOW)
    assert hit.referrer is not None and hit.referrer.startswith("https://x.example/")
    assert "\N{REPLACEMENT CHARACTER}" in hit.referrer


def test_hits_get_distinct_time_ordered_uuid7_ids() -> None:
    ids = [build_hit("abc", [], PEER, CF, NOW + i).id for i in range(1000)]
    assert len(set(ids)) == 1000
    assert all(uuid.UUID(i).version == 7 for i in ids)
    assert ids == sorted(ids)


HEADER_NAMES = [b"user-agent", b"referer", b"cf-ipcountry", b"x-forwarded-for", b"cookie"]


@settings(max_examples=200, deadline=None)
@given(
    headers=st.lists(
        st.tuples(st.sampled_from(HEADER_NAMES), st.binary(max_size=4096)), max_size=8
    ),
    address=st.none() | st.text(max_size=80),
    trust_proxy=st.booleans(),
)
def test_any_request_makes_a_hit_within_its_caps(
    headers: list[tuple[bytes, bytes]], address: str | None, trust_proxy: bool
) -> None:
    cfg = CaptureConfig(salt=SALT, country_header=b"cf-ipcountry", trust_proxy=trust_proxy)
    client = None if address is None else (address, 443)
    hit = build_hit("abc", headers, client, cfg, NOW)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(hit), type=Hit) == hit
    assert hit.referrer is None or len(hit.referrer) <= REFERRER_CAP
    assert hit.country is None or len(hit.country) <= 8
    assert hit.ip_prefix is None or len(hit.ip_prefix) <= 64
