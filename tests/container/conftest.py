"""Fixtures of the image tests: the engine, the image, and what the pods mount.

``make image-test`` sets ``GRAFT_IMAGE`` (the tag it just built) and ``GRAFT_IMAGE_REQUIRED=1``, which
turns every skip below into a failure: in CI a missing engine, image or ../shared is a broken check,
not a pass.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.container.engine import Engine, find_engine, writable_folder
from tests.support.artifacts import shared_missing_reason


def _unavailable(reason: str) -> None:
    if os.environ.get("GRAFT_IMAGE_REQUIRED") == "1":
        pytest.fail(f"GRAFT_IMAGE_REQUIRED=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def engine() -> Engine:
    found, why = find_engine()
    if found is None:
        _unavailable(f"no container engine: {why}")
    assert found is not None
    return found


@pytest.fixture(scope="session")
def image(engine: Engine) -> str:
    name = os.environ.get("GRAFT_IMAGE", "graft:0.1.0-cpu")
    if engine("image", "inspect", name, check=False).returncode != 0:
        _unavailable(f"image {name} is not built here: run `make image` (or set GRAFT_IMAGE)")
    return name


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store of two real ants/bees archives (v1 ONNX Runtime, v2 PyTorch), built on this machine."""
    reason = shared_missing_reason()
    if reason:
        _unavailable(reason)
    from tests.support.artifacts import cached_store

    _, store = cached_store(tmp_path_factory.getbasetemp())
    for mar in store.glob("*.mar"):
        mar.chmod(0o644)
    return store


@pytest.fixture
def writable_store(model_store: Path, tmp_path: Path) -> Path:
    """A copy of the store that the container's user may write (the admin exports new versions into it)."""
    store = writable_folder(tmp_path / "store")
    for mar in model_store.glob("*.mar"):
        shutil.copy2(mar, store / mar.name)
    return store
