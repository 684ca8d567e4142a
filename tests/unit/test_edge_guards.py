"""The Host and Origin rules of api/guards.py, as pure functions of the
configuration (the wiring is tests/integration/test_edge_guards.py)."""

from __future__ import annotations

import pytest

from knhkd.api.guards import check_host, check_origin, is_json
from knhkd.config import HttpConfig
from knhkd.errors import Forbidden

LOOPBACK = HttpConfig(bind="127.0.0.1:8080")


@pytest.mark.parametrize(
    "host",
    ["localhost", "localhost:8080", "LOCALHOST:8080", "127.0.0.1", "127.0.0.1:8080",
     "[::1]", "[::1]:8080"],
)
def test_loopback_names_are_allowed_by_default(host: str) -> None:
    check_host(host, LOOPBACK)
    check_host(host, HttpConfig(bind="[::1]:8080"))


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:8080", "localhost:8081", "127.0.0.2:8080", "",
     "localhost.evil.example:8080", "[::2]:8080"],
)
def test_other_hosts_are_refused_on_loopback(host: str) -> None:
    with pytest.raises(Forbidden) as info:
        check_host(host, LOOPBACK)
    assert info.value.problem == "host-not-allowed"


def test_configured_hosts_replace_the_defaults() -> None:
    cfg = HttpConfig(bind="0.0.0.0:8080", allowed_hosts=("knhkd.internal", "10.0.0.5:9000"))
    for ok in ("knhkd.internal", "knhkd.internal:8080", "10.0.0.5:9000"):
        check_host(ok, cfg)
    for bad in ("localhost", "10.0.0.5", "knhkd.internal:9000", "other"):
        with pytest.raises(Forbidden):
            check_host(bad, cfg)


def test_any_host_when_bound_elsewhere_and_none_configured() -> None:
    check_host("whatever.example", HttpConfig(bind="0.0.0.0:8080"))


def test_origin_is_refused_for_mutating_methods_unless_configured() -> None:
    cfg = HttpConfig(allowed_origins=("https://ops.example",))
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        with pytest.raises(Forbidden) as info:
            check_origin(method, "https://evil.example", cfg)
        assert info.value.problem == "origin-not-allowed"
        with pytest.raises(Forbidden):
            check_origin(method, "null", cfg)
        check_origin(method, "https://ops.example", cfg)
        check_origin(method, "HTTPS://OPS.EXAMPLE/", cfg)
        check_origin(method, None, cfg)
    check_origin("GET", "https://evil.example", cfg)


@pytest.mark.parametrize(
    ("mimetype", "ok"),
    [("application/json", True), ("application/merge-patch+json", True),
     ("text/plain", False), ("application/x-www-form-urlencoded", False),
     ("multipart/form-data", False), ("", False), ("text/json", False)],
)
def test_json_media_types(mimetype: str, ok: bool) -> None:
    assert is_json(mimetype) is ok
