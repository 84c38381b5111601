"""Dataset manifests: the admin's frozen snapshots, read by ``graft train --manifest`` (and by the admin).

```json
{"digest": "sha256:<hex of the canonical item list>", "created_at": "...",
 "items": [{"path": "/abs/img.jpg", "label": "ants", "split": "train"}, ...]}
```

``split`` is ``train``, ``val`` or ``holdout``. Training never reads ``holdout`` items (the admin judges
models on them). The digest covers content (bytes, labels, splits), not where files live.
No torch here: the admin reads and writes manifests without importing it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from graft.core.errors import DatasetError
from graft.core.util import file_sha256, utc_now, write_atomic

Split = Literal["train", "val", "holdout"]
SPLITS: tuple[Split, ...] = ("train", "val", "holdout")


@dataclass(frozen=True)
class Item:
    """One labelled image of a dataset."""

    path: Path
    label: str
    split: Split


def dataset_digest(items: Iterable[Item], sha_of: Callable[[Path], str] = file_sha256) -> str:
    """A digest of the content (bytes, labels, splits), independent of where the files live.

    ``sha_of``: each file's hex sha256 (a caller that already knows them, e.g. content-addressed samples,
    need not read every file again)."""
    rows = sorted(f"{sha_of(i.path)} {i.label} {i.split}" for i in items)
    return "sha256:" + hashlib.sha256("\n".join(rows).encode()).hexdigest()


def write_manifest(items: Iterable[Item], path: Path, sha_of: Callable[[Path], str] = file_sha256) -> str:
    """Write an immutable dataset snapshot (atomically); returns its digest (``sha_of``: see dataset_digest)."""
    items = list(items)
    for i in items:
        if i.split not in SPLITS:
            raise DatasetError(f"manifest item {i.path}: split must be one of {SPLITS}, not {i.split!r}")
    digest = dataset_digest(items, sha_of)
    body = {
        "digest": digest,
        "created_at": utc_now(),
        "items": [{"path": str(Path(i.path).resolve()), "label": i.label, "split": i.split} for i in items],
    }
    write_atomic(Path(path), (json.dumps(body, indent=1) + "\n").encode(), fsync=False)
    return digest


def read_manifest(path: Path) -> tuple[list[Item], str]:
    """The items of a manifest and its recorded digest; :class:`DatasetError` when it cannot be read."""
    path = Path(path)
    try:
        body = json.loads(path.read_text())
        items = [_item(raw) for raw in body["items"]]
        return items, str(body.get("digest", ""))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"cannot read dataset manifest {path}: {e}") from e


def _item(raw: dict[str, object]) -> Item:
    split = str(raw["split"])
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    return Item(Path(str(raw["path"])), str(raw["label"]), cast(Split, split))
