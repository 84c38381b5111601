"""Where things are: the repository, and ../shared beside it (real data and weights, read in place)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
HYMENOPTERA = SHARED / "data" / "hymenoptera"
MOBILENET_V2 = SHARED / "weights" / "mobilenet_v2_imagenet.pth"
