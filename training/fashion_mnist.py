"""Built-in datasets that need no network: Fashion-MNIST from Debian's ``dataset-fashion-mnist``."""

from __future__ import annotations

import gzip
import logging
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from graft.core.errors import DatasetError

log = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_LABELS = (
    "tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)  # fmt: skip


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic == 2049:  # labels
        return np.frombuffer(data, dtype=np.uint8, offset=8, count=n)
    if magic == 2051:  # images
        rows, cols = struct.unpack(">II", data[8:16])
        return np.frombuffer(data, dtype=np.uint8, offset=16, count=n * rows * cols).reshape(n, rows, cols)
    raise DatasetError(f"{path} is not an IDX file (magic {magic})")


def fashion_mnist_folder(dest: Path, per_class: int = 150, val_per_class: int = 50, source: Path | None = None) -> Path:
    """Write a ``train/<label>`` + ``val/<label>`` PNG folder from Fashion-MNIST (idempotent)."""
    src = Path(source or FASHION_MNIST_DIR)
    if not (src / "train-images-idx3-ubyte.gz").is_file():
        raise DatasetError(
            f"Fashion-MNIST not found in {src}: install Debian's dataset-fashion-mnist "
            "(apt-get install dataset-fashion-mnist; 'make setup' does this)"
        )
    dest = Path(dest)
    marker = dest / f".complete-{per_class}-{val_per_class}"
    if marker.exists():
        return dest
    for split, prefix, n in (("train", "train", per_class), ("val", "t10k", val_per_class)):
        images = read_idx(src / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(src / f"{prefix}-labels-idx1-ubyte.gz")
        for k, name in enumerate(FASHION_MNIST_LABELS):
            out = dest / split / name
            out.mkdir(parents=True, exist_ok=True)
            for idx in np.flatnonzero(labels == k)[:n]:
                Image.fromarray(images[idx], mode="L").save(out / f"{prefix}-{idx:05d}.png")
    marker.touch()
    log.info("Fashion-MNIST: %d train + %d val images per class in %s", per_class, val_per_class, dest)
    return dest


def fashion_mnist_pngs(start: int, count: int, source: Path | None = None) -> dict[str, list[bytes]]:
    """PNG bytes of training images ``start .. start+count`` of each class (for posting as new samples).

    :func:`fashion_mnist_folder` uses the first ``per_class`` images of each class; asking for
    ``start=per_class`` gives images the first model never saw.
    """
    import io

    src = Path(source or FASHION_MNIST_DIR)
    images = read_idx(src / "train-images-idx3-ubyte.gz")
    labels = read_idx(src / "train-labels-idx1-ubyte.gz")
    out: dict[str, list[bytes]] = {}
    for k, name in enumerate(FASHION_MNIST_LABELS):
        out[name] = []
        for idx in np.flatnonzero(labels == k)[start : start + count]:
            buf = io.BytesIO()
            Image.fromarray(images[idx], mode="L").save(buf, "PNG")
            out[name].append(buf.getvalue())
    return out
