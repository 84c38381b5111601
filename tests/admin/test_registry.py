"""The model registry: versions, the history of defaults, rollback targets and the keep set."""

from __future__ import annotations

from pathlib import Path

import pytest

from admin.store.db import Database
from admin.store.registry import Registry
from graft.core.errors import ConflictError, NotFoundError


def test_registry_rollback_walks_back_through_history(tmp_path: Path) -> None:
    reg = Registry(Database(tmp_path / "db.sqlite3"), tmp_path / "store", "m")
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "m-7.mar").write_bytes(b"x")
    assert reg.next_version() == "8", "a .mar already in the store reserves its version"
    for v in ("1", "2", "3"):
        reg.create(v, status="accepted", source="job")
    with pytest.raises(ConflictError):
        reg.rollback_target()
    reg.record_default("1", "import")
    reg.record_default("2", "promote")
    reg.record_default("3", "promote")
    assert reg.keep_set(2) == ["3", "2"] and reg.keep_set(5) == ["3", "2", "1"]
    assert reg.rollback_target() == "2"
    reg.record_default("2", "rollback")
    assert reg.default_version() == "2" and reg.rollback_target() == "1"
    reg.record_default("1", "rollback")
    with pytest.raises(ConflictError, match="first default"):
        reg.rollback_target()
    with pytest.raises(NotFoundError):
        reg.get("99")
    with pytest.raises(ConflictError):
        reg.create("1", status="accepted", source="job")
