"""Encryption key rotation: secrets under the retired key still open, and rekey moves them all to the new key."""

from __future__ import annotations

import pytest

from engine.store import repo
from engine.store.crypto import SecretError

pytestmark = pytest.mark.usefixtures("db")

OLD_KEY = b"o" * 32
NEW_KEY = b"n" * 32
STRANGER = b"s" * 32


def test_a_secret_under_the_retired_key_opens_while_it_is_named() -> None:
    """During a rotation the app keeps signing with its secret; without the retired key it does not open."""
    app, secret = repo.create_app("old", OLD_KEY)
    assert repo.app_secret(app, NEW_KEY, (OLD_KEY,)) == secret
    with pytest.raises(SecretError):
        repo.app_secret(app, NEW_KEY)


def test_rekey_moves_every_secret_to_the_new_key_and_keeps_it() -> None:
    """After rekey each app's secret is unchanged and opens with the new key alone; a second run changes nothing."""
    apps = [repo.create_app(f"app{i}", OLD_KEY) for i in range(3)]
    fresh, fresh_secret = repo.create_app("fresh", NEW_KEY)
    assert repo.reencrypt_secrets(NEW_KEY, (OLD_KEY,)) == (3, [])
    for app, secret in [*apps, (fresh, fresh_secret)]:
        stored = repo.get_app(app.app_id)
        assert stored is not None and repo.app_secret(stored, NEW_KEY) == secret
    assert repo.reencrypt_secrets(NEW_KEY, (OLD_KEY,)) == (0, [])


def test_rekey_names_secrets_no_key_opens_and_leaves_them() -> None:
    """A secret under neither key is reported by app id and left as it was, while the others move."""
    lost, _ = repo.create_app("lost", STRANGER)
    moved, secret = repo.create_app("moved", OLD_KEY)
    assert repo.reencrypt_secrets(NEW_KEY, (OLD_KEY,)) == (1, [lost.app_id])
    assert repo.get_app(lost.app_id).secret == lost.secret  # type: ignore[union-attr]
    assert repo.app_secret(repo.get_app(moved.app_id), NEW_KEY) == secret  # type: ignore[arg-type]
