"""The model registry: every version with its metrics and lineage, and the history of defaults.

What MLflow users expect from a registry, kept in SQLite: versions are integers as strings (they
double as TorchServe model versions and ``NAME-V.mar`` file names), the default is the head of the
``deployments`` history, and a rollback follows ``previous_seq`` back through that history.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from admin.store.db import Database, dumps, loads
from admin.store.rows import DeployAction, Deployment, ModelStatus, ModelVersion
from graft.core.errors import ConflictError, NotFoundError
from graft.core.util import utc_now

_JSON_FIELDS = ("labels", "metrics", "lineage", "recipe")


class Registry:
    def __init__(self, db: Database, model_store: Path, model_name: str | None):
        self.db = db
        self.model_store = Path(model_store)
        self.model_name = model_name  # None until the service knows which model it manages

    @property
    def name(self) -> str:
        if self.model_name is None:
            raise ConflictError("no model is in service yet: there is no model name to act on")
        return self.model_name

    # ------------------------------------------------------------------ versions
    def next_version(self) -> str:
        """One above every version known to the registry or present as a ``.mar`` in the store."""
        numbers = [int(r["version"]) for r in self.db.all("SELECT version FROM models") if r["version"].isdigit()]
        prefix = f"{self.name}-"
        for mar in self.model_store.glob(f"{prefix}*.mar") if self.model_store.is_dir() else []:
            tail = mar.stem[len(prefix) :]
            if tail.isdigit():
                numbers.append(int(tail))
        return str(max(numbers, default=0) + 1)

    def create(self, version: str, *, status: ModelStatus, source: str, **fields: Any) -> None:
        now = utc_now()
        cols = {"version": version, "status": status, "source": source, "created_at": now, "updated_at": now}
        for k, v in fields.items():
            cols[k] = dumps(v) if k in _JSON_FIELDS else (str(v) if isinstance(v, Path) else v)
        names = ", ".join(cols)
        marks = ", ".join("?" for _ in cols)
        try:
            self.db.execute(f"INSERT INTO models ({names}) VALUES ({marks})", list(cols.values()))
        except sqlite3.IntegrityError as e:
            raise ConflictError(f"model version {version} already exists") from e

    def update(self, version: str, **fields: Any) -> None:
        cols = {k: dumps(v) if k in _JSON_FIELDS else (str(v) if isinstance(v, Path) else v) for k, v in fields.items()}
        cols["updated_at"] = utc_now()
        assignments = ", ".join(f"{k} = ?" for k in cols)
        self.db.execute(f"UPDATE models SET {assignments} WHERE version = ?", [*cols.values(), version])

    def get(self, version: str) -> ModelVersion:
        model = self.find(version)
        if model is None:
            raise NotFoundError(f"no model version {version!r}: GET /v1/models lists them")
        return model

    def find(self, version: str) -> ModelVersion | None:
        row = self.db.one("SELECT * FROM models WHERE version = ?", (version,))
        return None if row is None else _model(row)

    def all(self) -> list[ModelVersion]:
        rows = self.db.all("SELECT * FROM models ORDER BY CAST(version AS INTEGER)")
        return [_model(r) for r in rows]

    def is_empty(self) -> bool:
        return self.db.one("SELECT 1 FROM models LIMIT 1") is None

    # ------------------------------------------------------------------ defaults
    def head(self) -> Deployment | None:
        row = self.db.one("SELECT * FROM deployments ORDER BY seq DESC LIMIT 1")
        return None if row is None else Deployment(**dict(row))

    def _deployment(self, seq: int) -> Deployment | None:
        row = self.db.one("SELECT * FROM deployments WHERE seq = ?", (seq,))
        return None if row is None else Deployment(**dict(row))

    def default_version(self) -> str | None:
        head = self.head()
        return None if head is None else head.version

    def champion(self) -> ModelVersion | None:
        version = self.default_version()
        return None if version is None else self.get(version)

    def record_default(self, version: str, action: DeployAction, job_id: str | None = None) -> None:
        """Make ``version`` the registry's default (after TorchServe already serves it as default)."""
        head = self.head()
        if action == "rollback":
            assert head is not None and head.previous_seq is not None
            target = self._deployment(head.previous_seq)
            previous = None if target is None else target.previous_seq
        else:
            previous = None if head is None else head.seq
        self.db.execute(
            "INSERT INTO deployments (version, action, previous_seq, job_id, at) VALUES (?, ?, ?, ?, ?)",
            (version, action, previous, job_id, utc_now()),
        )

    def rollback_target(self) -> str:
        head = self.head()
        if head is None:
            raise ConflictError("nothing to roll back: no model has been put in service yet")
        if head.previous_seq is None:
            raise ConflictError(f"nothing to roll back to: version {head.version} is the first default in history")
        target = self._deployment(head.previous_seq)
        assert target is not None
        return target.version

    def keep_set(self, keep: int) -> list[str]:
        """The default and the versions successive rollbacks would reach, ``keep`` in all."""
        out: list[str] = []
        entry = self.head()
        while entry is not None and len(out) < keep:
            if entry.version not in out:
                out.append(entry.version)
            entry = None if entry.previous_seq is None else self._deployment(entry.previous_seq)
        return out

    def history(self) -> list[Deployment]:
        return [Deployment(**dict(r)) for r in self.db.all("SELECT * FROM deployments ORDER BY seq")]

    def promoted_at(self, version: str) -> str | None:
        row = self.db.one("SELECT MAX(at) AS at FROM deployments WHERE version = ?", (version,))
        return None if row is None else row["at"]


def _model(row: sqlite3.Row) -> ModelVersion:
    out = dict(row)
    for k in _JSON_FIELDS:
        out[k] = loads(out[k], {} if k != "labels" else [])
    return ModelVersion(**out)
