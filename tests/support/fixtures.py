"""Fixtures every test package may use (tests/conftest.py exposes them).

Real data from ../shared skips with a reason when it is absent; TorchServe tests skip without Java.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from tests.support.paths import HYMENOPTERA, MOBILENET_V2


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(
            f"{what} not found at {path}: these tests need ../shared beside the checkout (see ../shared/README.md)"
        )
    return path


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    """The ants/bees image set: train/{ants,bees}, val/{ants,bees}."""
    return _need(HYMENOPTERA, "the ants/bees data set")


@pytest.fixture(scope="session")
def mobilenet_weights() -> Path:
    """ImageNet MobileNetV2 as a torchvision state_dict."""
    return _need(MOBILENET_V2, "the ImageNet MobileNetV2 weights")


@pytest.fixture(scope="session")
def java() -> str:
    exe = shutil.which("java")
    if exe is None:
        pytest.skip("TorchServe needs a Java 17 runtime ('make setup' installs it)")
    return exe


@pytest.fixture(scope="session")
def serving_artifacts(tmp_path_factory: pytest.TempPathFactory, hymenoptera: Path, mobilenet_weights: Path
                      ) -> tuple[Path, Path]:  # fmt: skip
    """(run folder, model store) of a tiny real ants/bees model, built once per session.

    The store holds ``antsbees-1.mar`` (ONNX Runtime backend) and ``antsbees-2.mar`` (PyTorch backend).
    """
    from tests.support.artifacts import cached_store

    return cached_store(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def int8_artifacts(serving_artifacts: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run folder, model store) of the same tiny model exported with --quantize int8: ``antsbees_int8-1.mar``."""
    from tests.support.artifacts import cached_int8_store

    return cached_int8_store(tmp_path_factory.getbasetemp())


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
