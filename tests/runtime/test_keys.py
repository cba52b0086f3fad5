"""Cluster key files: creation, mode 0600, copying to other nodes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from meshfaas.runtime.keys import (
    ClusterKeys,
    KeyFileError,
    cluster_key_path,
    ensure_cluster_keys,
    read_keys,
)


def test_first_node_creates_keys_with_mode_0600(tmp_path: Path) -> None:
    keys = ensure_cluster_keys(tmp_path / "n1")
    path = cluster_key_path(tmp_path / "n1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_keys(path) == keys
    assert ensure_cluster_keys(tmp_path / "n1") == keys  # restart: same keys
    assert keys.secret_key.decode() not in repr(keys)


def test_other_nodes_are_given_the_keys(tmp_path: Path) -> None:
    keys = ensure_cluster_keys(tmp_path / "n1")
    given = cluster_key_path(tmp_path / "n1")
    assert ensure_cluster_keys(tmp_path / "n2", given=given, create=False) == keys
    assert stat.S_IMODE(cluster_key_path(tmp_path / "n2").stat().st_mode) == 0o600
    with pytest.raises(KeyFileError, match="no cluster keys"):
        ensure_cluster_keys(tmp_path / "n3", create=False)
    other = ensure_cluster_keys(tmp_path / "other")
    assert other.cluster_id != keys.cluster_id
    with pytest.raises(KeyFileError, match="another cluster"):
        ensure_cluster_keys(tmp_path / "n2", given=cluster_key_path(tmp_path / "other"))


def test_readable_or_bad_key_files_are_refused(tmp_path: Path) -> None:
    ensure_cluster_keys(tmp_path)
    path = cluster_key_path(tmp_path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        read_keys(path)
    os.chmod(path, 0o600)
    mismatched = ClusterKeys.generate()
    path.write_text(mismatched.to_json().replace(mismatched.public_key.decode(),
                                                 ClusterKeys.generate().public_key.decode()))
    with pytest.raises(KeyFileError, match="does not match"):
        read_keys(path)
    path.write_text("{not json")
    with pytest.raises(KeyFileError, match="malformed"):
        read_keys(path)
