"""The docs hook module (docs/hooks/reference.py) is not a package: load it by path, as MkDocs does."""

from __future__ import annotations

import importlib.util
from types import ModuleType

import pytest

from tests.support.paths import REPO


@pytest.fixture(scope="session")
def reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("graft_docs_reference", REPO / "docs" / "hooks" / "reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
