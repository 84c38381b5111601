"""Shared fixtures: the real data in ../shared (skipped with a reason when it is absent)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
HYMENOPTERA = SHARED / "data" / "hymenoptera"
MOBILENET_V2 = SHARED / "weights" / "mobilenet_v2_imagenet.pth"


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
