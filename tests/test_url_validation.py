"""Which codes, targets, expiries and tags a route may have: a corpus of good and bad."""

from __future__ import annotations

import pytest

from rlinks.errors import ConfigError, InvalidRouteError
from rlinks.routes import Meta, Route, Rules, validate_code, validate_route, validate_target
from rlinks.routes.hosts import HostKey, canonical_host, public_host_key
from rlinks.routes.validate import (
    MAX_TARGET_CHARS,
    parse_target,
    validate_expires,
    validate_meta,
)

PUBLIC = ("short.example", "127.0.0.1")


def check(url: str, *, https_only: bool = True, allow_loop: bool = False) -> str:
    """validate_target with our test public hosts."""
    return validate_target(url, https_only=https_only, allow_loop=allow_loop, public_hosts=PUBLIC)


def refusal(url: str, **kw: bool) -> str:
    """The message of the InvalidRouteError `url` raises (field "target")."""
    with pytest.raises(InvalidRouteError) as info:
        check(url, **kw)
    assert info.value.field == "target"
    return str(info.value)


# -- targets that are fine -------------------------------------------------------------

GOOD = [
    "https://example.com",
    "https://example.com/",
    "https://example.com/a/b?c=d&e=%20f#frag",
    "https://EXAMPLE.com/Path",
    "https://example.com:8443/x",
    "https://example.com:/x",  # an empty port is the default one
    "https://sub.domain.example.co.uk/",
    "https://bücher.example/",
    "https://xn--bcher-kva.example/",
    "https://203.0.113.7/x",
    "https://[2001:db8::1]/x",
    "https://[2001:db8::1]:8443/x",
    "https://under_score.example/",
    "https://example.com/ünïcode/path",
    "https://example.com/?q=a@b",  # an @ after the host is not user info
    "https://example.com/#@short.example",
    "https://example.com/" + "a" * (MAX_TARGET_CHARS - len("https://example.com/")),
    "https://short.example.evil.example/",  # our host as a label of another host is not ours
    "https://evil.example/short.example",
]


@pytest.mark.parametrize("url", GOOD)
def test_good_targets_pass_unchanged(url: str) -> None:
    """A well-formed https URL to another host is accepted and returned as given."""
    assert check(url) == url


@pytest.mark.parametrize("url", ["http://example.com/", "HTTP://example.com:8080/x"])
def test_http_passes_only_when_https_is_not_required(url: str) -> None:
    """Plain http is refused by default and accepted with https_only=False."""
    assert "uses http://" in refusal(url)
    assert "--no-https" in refusal(url)
    assert check(url, https_only=False) == url


# -- targets that are refused, and what the message says ------------------------------

BAD: list[tuple[str, str]] = [
    # not http(s)
    ("javascript:alert(1)", "scheme javascript:"),
    ("JavaScript:alert(document.cookie)", "scheme javascript:"),
    ("data:text/html,<script>alert(1)</script>", "scheme data:"),
    ("data:text/html;base64,PHNjcmlwdD4=", "scheme data:"),
    ("file:///etc/passwd", "scheme file:"),
    ("ftp://example.com/file", "scheme ftp:"),
    ("vbscript:msgbox", "scheme vbscript:"),
    ("mailto:a@example.com", "scheme mailto:"),
    ("localhost:8080/x", "write https://localhost:8080/x"),
    # not absolute, or no host
    ("example.com/x", "not an absolute URL"),
    ("//example.com/x", "not an absolute URL"),
    ("/relative/path", "not an absolute URL"),
    ("", "empty"),
    ("https://", "no host"),
    ("https:///x", "no host"),
    ("https:/example.com", "no host"),
    ("https:example.com", "no host"),
    ("https:\\\\example.com", "not '\\'"),
    ("https://:443/", "no host"),
    # whitespace and control characters
    (" https://example.com/", "starts with whitespace"),
    ("https://example.com/ ", "ends with whitespace"),
    ("\thttps://example.com/", "starts with whitespace"),
    ("https://example.com/\n", "ends with whitespace"),
    ("\x00https://example.com/", "control character (U+0000) at position 0"),
    ("\x1bhttps://example.com/", "control character (U+001B)"),
    ("https://example.com/a\tb", "a tab at position 21"),
    ("https://exa\tmple.com/", "a tab"),
    ("https://example.com/a\nb", "a line break"),
    ("https://example.com/a\r\nb", "a line break"),
    ("https://example.com/a b", "a space character (U+0020)"),
    ("https://example.com/a\u00a0b", "a space character (U+00A0)"),
    ("https://example.com/a\u3000b", "a space character (U+3000)"),
    ("https://example.com/\x7f", "control character (U+007F)"),
    ("https://example.com/a\x85b", "control character (U+0085)"),
    ("https://example.com/a\u2028b", "a space character (U+2028)"),
    ("https://exa\u200bmple.com/", "invisible formatting character (U+200B)"),
    ("https://example.com/\u202egnp.exe", "invisible formatting character (U+202E)"),
    ("https://sho\u00adrt.example/", "invisible formatting character (U+00AD)"),
    # user info
    ("https://user:pass@example.com/", "user info"),
    ("https://user@example.com/", "user info"),
    ("https://short.example@evil.example/", "user info"),
    ("https://evil.example\\@short.example/", "user info"),
    # hosts that are not what they seem, or not valid
    ("https://evil.example\\.short.example/", "backslash"),
    ("https://short%2Eexample/", "percent-encoding is not allowed in a host"),
    ("https://%73hort.example/", "percent-encoding"),
    ("https://exa..mple.com/", "empty label"),
    ("https://exa mple.com/", "a space character"),
    ("https://exa<mple.com/", "characters a host name cannot have"),
    ("https://example.com\uff0fshort.example/", "cannot be parsed"),
    ("https://[::1/", "cannot be parsed"),
    ("https://[not-v6]/", "cannot be parsed"),
    ("https://[fe80::1%25eth0]/", "percent-encoding"),
    ("https://example.com:99999/", "invalid port '99999'"),
    ("https://example.com:0/", "invalid port '0'"),
    ("https://example.com:443:443/", "more than one ':'"),
    ("https://example.com:\u0664\u0664\u0663/", "invalid port"),
    ("https://example.com:-1/", "invalid port"),
    ("https://1.2.3.4.5/", "not a valid IPv4 address"),
    ("https://256.0.0.1/", "not a valid IPv4 address"),
    ("https://example.0x/", "not a valid IPv4 address"),
    ("https://09.1.1.1/", "not a valid IPv4 address"),  # 09 is not octal
    ("https://xn--a.example/", "not a valid international domain name"),
    ("https://" + "a" * 64 + ".example/", "longer than 63 characters"),
    # length
    ("https://example.com/" + "a" * MAX_TARGET_CHARS, "the limit is 2048"),
]


@pytest.mark.parametrize(("url", "expected"), BAD)
def test_bad_targets_are_refused_with_a_precise_message(url: str, expected: str) -> None:
    """Each bad target raises InvalidRouteError(field="target") saying what is wrong."""
    assert expected in refusal(url, https_only=False, allow_loop=True)


def test_the_length_limit_is_exactly_2048() -> None:
    """2048 characters pass; 2049 are refused with the actual length in the message."""
    base = "https://example.com/"
    assert check(base + "a" * (MAX_TARGET_CHARS - len(base)))
    assert "2049 characters" in refusal(base + "a" * (MAX_TARGET_CHARS - len(base) + 1))


def test_messages_do_not_repeat_credentials() -> None:
    """A target with user info is refused without echoing the password."""
    assert "s3cret" not in refusal("https://ann:s3cret@example.com/")


# -- loops -----------------------------------------------------------------------------

LOOPS = [
    "https://short.example/x",
    "https://SHORT.EXAMPLE/x",
    "HTTPS://SHORT.EXAMPLE./x",
    "https://short.example./",
    "https://short.example:443/x",
    "https://short.example:8443/x",  # no port configured: every port of the host is ours
    "https://short.example:/x",
    "https://ShOrT.eXaMpLe",
    "https://ｓｈｏｒｔ.example/",  # full-width letters map to ASCII (IDNA)
    "https://short\u3002example/",  # ideographic full stop is a dot
    "https://short\uff0eexample/",  # full-width full stop
    "https://xn--short-.example/",  # punycode of plain "short"
    "https://127.0.0.1/",
    "https://127.0.0.1:8000/",
    "https://2130706433/",  # 127.0.0.1 as one number
    "https://0x7f.1/",
    "https://0x7F000001/",
    "https://0177.0.0.1/",
    "https://127.1/",
    "https://127.0.0.1./",
    "https://[::ffff:127.0.0.1]/",
    "https://[::ffff:7f00:1]/",
]


@pytest.mark.parametrize("url", LOOPS)
def test_loops_to_our_own_host_are_refused_in_every_disguise(url: str) -> None:
    """Case, trailing dots, ports, IDNA, punycode and IPv4 notations do not hide a loop."""
    message = refusal(url)
    assert "loop" in message and "--allow-loop" in message


@pytest.mark.parametrize("url", LOOPS[:3])
def test_a_loop_passes_when_allowed(url: str) -> None:
    """allow_loop=True (rules.no_loop = false) accepts a target on our own host."""
    assert check(url, allow_loop=True) == url


def test_loop_check_with_a_port_specific_public_host() -> None:
    """A public host with a port claims only that port (defaults count as 80/443)."""
    hosts = ["localhost:8000", "short.example:443"]

    def ok(url: str) -> bool:
        try:
            validate_target(url, https_only=False, allow_loop=False, public_hosts=hosts)
        except InvalidRouteError:
            return False
        return True

    assert not ok("http://localhost:8000/x") and not ok("http://LOCALHOST.:8000/")
    assert ok("http://localhost:3000/x") and ok("http://localhost/")
    assert not ok("https://short.example/") and not ok("https://short.example:443/")
    assert ok("http://short.example/") and ok("https://short.example:8443/")


def test_ipv6_public_hosts() -> None:
    """An IPv6 public host matches every spelling of the address."""
    for url in ("https://[::1]/", "https://[0:0:0:0:0:0:0:1]:8080/"):
        with pytest.raises(InvalidRouteError, match="loop"):
            validate_target(url, https_only=True, allow_loop=False, public_hosts=["::1"])
    assert validate_target(
        "https://[::2]/", https_only=True, allow_loop=False, public_hosts=["[::1]"]
    )


def test_an_idn_public_host_matches_its_punycode() -> None:
    """A public host written in Unicode matches the punycode spelling, and back."""
    for hosts, url in (
        (["bücher.example"], "https://xn--bcher-kva.example/"),
        (["xn--bcher-kva.example"], "https://BÜCHER.example/"),
    ):
        with pytest.raises(InvalidRouteError, match="loop"):
            validate_target(url, https_only=True, allow_loop=False, public_hosts=hosts)


def test_no_public_hosts_means_no_loop_check() -> None:
    """With no public hosts configured, nothing counts as a loop."""
    assert validate_target(
        "https://short.example/", https_only=True, allow_loop=False, public_hosts=[]
    )


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ("short.example", HostKey("short.example", None)),
        ("  SHORT.Example. ", HostKey("short.example", None)),
        ("short.example:8080", HostKey("short.example", 8080)),
        ("https://short.example", HostKey("short.example", None)),
        ("https://short.example:8443/", HostKey("short.example", 8443)),
        ("::1", HostKey("::1", None)),
        ("[::1]:8000", HostKey("::1", 8000)),
        ("2130706433", HostKey("127.0.0.1", None)),
    ],
)
def test_public_host_entries(entry: str, key: HostKey) -> None:
    """Public hosts are read as host, host:port, [v6]:port or a URL, and canonicalized."""
    assert public_host_key(entry) == key


@pytest.mark.parametrize(
    "entry", ["", "  ", "a b", "user@short.example", "short.example/x", "h:99999"]
)
def test_bad_public_hosts_are_config_errors(entry: str) -> None:
    """A public host that is not a host raises ConfigError saying how to write one."""
    with pytest.raises(ConfigError, match="public host"):
        public_host_key(entry)


@pytest.mark.parametrize(
    ("text", "host"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("ＥＸＡＭＰＬＥ.com", "example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("1.2.3", "1.2.0.3"),
    ],
)
def test_canonical_host(text: str, host: str) -> None:
    """Hosts are compared in the form a browser connects to."""
    assert canonical_host(text) == host


def test_parse_target_reports_scheme_and_effective_port() -> None:
    """parse_target gives the scheme and the port a browser would use."""
    assert parse_target("http://Example.com/").key == HostKey("example.com", 80)
    assert parse_target("https://example.com/").key == HostKey("example.com", 443)
    assert parse_target("HTTPS://example.com:8443").scheme == "https"


# -- codes -----------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["a", "promo", "spring-sale-2026", "0", "-", "a" * 64])
def test_good_codes(code: str) -> None:
    """Codes of 1 to 64 characters from a-z, 0-9 and '-' are valid."""
    assert validate_code(code) == code


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("", "empty"),
        ("a" * 65, "65 characters long"),
        ("Promo", "use 'promo' instead of 'Promo'"),
        ("PROMO", "lowercase"),
        ("a_b", "contains '_'"),
        ("a b", "contains ' '"),
        ("a/b", "contains '/'"),
        ("café", "contains 'é'"),
        ("promo\n", "contains '\\n'"),
        ("api", "reserved"),
        ("admin", "reserved"),
        ("www", "reserved"),
        ("healthz", "reserved"),
        ("metrics", "reserved"),
    ],
)
def test_bad_codes(code: str, expected: str) -> None:
    """A bad code raises InvalidRouteError(field="code") saying what is wrong."""
    with pytest.raises(InvalidRouteError) as info:
        validate_code(code)
    assert info.value.field == "code"
    assert expected in str(info.value)


def test_reserved_codes_are_well_formed_for_lookups() -> None:
    """allow_reserved accepts a reserved code (it simply never names a route)."""
    assert validate_code("api", allow_reserved=True) == "api"
    with pytest.raises(InvalidRouteError):
        validate_code("API", allow_reserved=True)


# -- expiry, notes, tags, whole routes -------------------------------------------------


@pytest.mark.parametrize(
    ("value", "canonical"),
    [
        ("2026-12-31T23:59:59Z", "2026-12-31T23:59:59.000Z"),
        ("2026-12-31T23:59:59.5+00:00", "2026-12-31T23:59:59.500Z"),
        ("2027-01-01T01:00:00+02:00", "2026-12-31T23:00:00.000Z"),
        ("2026-12-31T20:00:00-05:00", "2027-01-01T01:00:00.000Z"),
    ],
)
def test_expiry_is_stored_in_utc(value: str, canonical: str) -> None:
    """An RFC 3339 expiry with any offset is normalized to UTC with milliseconds."""
    assert validate_expires(value) == canonical


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-12-31", "no UTC offset"),
        ("2026-12-31T23:59:59", "no UTC offset"),
        ("tomorrow", "not an RFC 3339 time"),
        ("", "not an RFC 3339 time"),
        ("2026-13-01T00:00:00Z", "not an RFC 3339 time"),
    ],
)
def test_bad_expiry(value: str, expected: str) -> None:
    """A bad expiry raises InvalidRouteError(field="expires_at") with an example."""
    with pytest.raises(InvalidRouteError) as info:
        validate_expires(value)
    assert info.value.field == "expires_at"
    assert expected in str(info.value) and "2026-12-31T23:59:59Z" in str(info.value)


def test_meta_is_normalized_and_checked() -> None:
    """Empty notes become None, duplicate tags go; bad tags and notes are refused."""
    assert validate_meta(Meta(notes="", tags=["a", "b", "a"])) == Meta(notes=None, tags=["a", "b"])
    assert validate_meta(Meta(notes="line\nline")).notes == "line\nline"
    for meta, field in [
        (Meta(tags=[""]), "tags"),
        (Meta(tags=["a b"]), "tags"),
        (Meta(tags=["x" * 65]), "tags"),
        (Meta(tags=[f"t{i}" for i in range(33)]), "tags"),
        (Meta(notes="x" * 2001), "notes"),
        (Meta(notes="bell\x07"), "notes"),
    ]:
        with pytest.raises(InvalidRouteError) as info:
            validate_meta(meta)
        assert info.value.field == field


def test_validate_route_checks_every_field_against_its_rules() -> None:
    """validate_route applies the route's own https_only/no_loop rules and normalizes."""
    r = Route.new("promo", "http://short.example/", rules=Rules(https_only=False, no_loop=False))
    assert validate_route(r, public_hosts=PUBLIC) == r
    with pytest.raises(InvalidRouteError, match="loop"):
        validate_route(r.replace(rules=Rules(https_only=False)), public_hosts=PUBLIC)
    with pytest.raises(InvalidRouteError, match="https"):
        validate_route(r.replace(rules=Rules(no_loop=False)))
    with pytest.raises(InvalidRouteError, match="reserved"):
        validate_route(r.replace(code="www"))
    expiring = r.replace(rules=Rules(https_only=False, expires_at="2030-01-01T01:00:00+01:00"))
    assert validate_route(expiring).rules.expires_at == "2030-01-01T00:00:00.000Z"
