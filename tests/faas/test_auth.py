"""API keys and the role permission table."""

from __future__ import annotations

import os

import pytest

from meshfaas.core import auth

# (role, operation, allowed): the whole table, written out so a change is deliberate.
TABLE = {
    "ping": "adiv",
    "deploy": "ad",
    "upload_blob": "ad",
    "invoke": "adi",
    "invoke_async": "adi",
    "result": "adi",
    "list_functions": "adv",
    "get_function": "adv",
    "delete_function": "ad",
    "update_config": "ad",
    "publish_version": "ad",
    "list_versions": "adv",
    "create_alias": "ad",
    "update_alias": "ad",
    "delete_alias": "ad",
    "list_aliases": "adv",
    "members": "adiv",
    "status": "adiv",
    "logs": "adv",
    "create_key": "a",
    "list_keys": "a",
    "revoke_key": "a",
}
LETTER = {"admin": "a", "developer": "d", "invoker": "i", "viewer": "v"}


def test_table_covers_every_operation() -> None:
    assert set(TABLE) == set(auth.OPERATIONS)


@pytest.mark.parametrize("operation", sorted(TABLE))
@pytest.mark.parametrize("role", auth.ROLES)
def test_permission_table(role: str, operation: str) -> None:
    assert auth.is_allowed(role, operation) is (LETTER[role] in TABLE[operation])


@pytest.mark.parametrize(("role", "operation"), [("root", "invoke"), ("admin", "format_disk"), ("", "")])
def test_unknown_names_are_never_allowed(role: str, operation: str) -> None:
    assert not auth.is_allowed(role, operation)


def test_make_parse_verify_round_trip() -> None:
    key = auth.make_api_key(os.urandom(auth.random_bytes_needed()))
    key_id, secret = auth.parse_api_key(key.token)
    assert (key_id, secret) == (key.key_id, key.secret)
    assert auth.secret_matches(key.salt, key.secret_hash, secret)
    assert not auth.secret_matches(key.salt, key.secret_hash, secret[:-1] + "x" if secret[-1] != "x" else "y")
    assert secret.encode() not in key.secret_hash


def test_same_secret_different_salt_different_hash() -> None:
    a = auth.make_api_key(bytes(8) + bytes(32) + bytes([1]) * 16)
    b = auth.make_api_key(bytes(8) + bytes(32) + bytes([2]) * 16)
    assert a.secret == b.secret and a.secret_hash != b.secret_hash


@pytest.mark.parametrize(
    "token",
    ["", "mf_", "mf_0123456789abcdef", "xx_0123456789abcdef_" + "a" * 43,
     "mf_0123456789ABCDEF_" + "a" * 43, "mf_0123456789abcdef_" + "a" * 42,
     "mf_0123456789abcdef_" + "a" * 43 + "\n"],
)
def test_parse_refuses_malformed(token: str) -> None:
    with pytest.raises(auth.BadApiKey):
        auth.parse_api_key(token)


def test_make_api_key_needs_exact_randomness() -> None:
    with pytest.raises(ValueError):
        auth.make_api_key(b"short")


def test_secret_matches_refuses_non_ascii() -> None:
    key = auth.make_api_key(bytes(56))
    assert not auth.secret_matches(key.salt, key.secret_hash, "é" * 43)
