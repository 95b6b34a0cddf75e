"""The shared check for vendors whose delivery reports are unsigned: token and source allowlist."""

from __future__ import annotations

from providers.base import CallbackRequest, check_shared_secret


def request(token: str = "", host: str = "203.0.113.7") -> CallbackRequest:
    return CallbackRequest("POST", {"token": token} if token else {}, {}, b"[]", host)


def test_without_token_or_allowlist_every_report_is_refused() -> None:
    """An account with no callback settings accepts no unsigned report at all."""
    assert "no token or allow_ips" in check_shared_secret(request("x"), {})


def test_token_must_match() -> None:
    """The ?token= of the callback URL must equal the account's token."""
    assert check_shared_secret(request("s3cret"), {"token": "s3cret"}) == ""
    assert "token" in check_shared_secret(request("guess"), {"token": "s3cret"})
    assert "token" in check_shared_secret(request(), {"token": "s3cret"})


def test_allowlist_takes_addresses_and_networks() -> None:
    """allow_ips entries may be single addresses or CIDR networks; anything else is refused."""
    allowed = {"allow_ips": ["198.51.100.1", "203.0.113.0/24"]}
    assert check_shared_secret(request(host="203.0.113.200"), allowed) == ""
    assert check_shared_secret(request(host="198.51.100.1"), allowed) == ""
    assert "not in allow_ips" in check_shared_secret(request(host="198.51.100.2"), allowed)
    assert "not in allow_ips" in check_shared_secret(request(host=""), allowed)


def test_token_and_allowlist_both_apply() -> None:
    """With both configured, a right token from the wrong address is still refused."""
    both = {"token": "s3cret", "allow_ips": ["203.0.113.0/24"]}
    assert check_shared_secret(request("s3cret", "203.0.113.9"), both) == ""
    assert "not in allow_ips" in check_shared_secret(request("s3cret", "192.0.2.1"), both)
