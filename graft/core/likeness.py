"""Is this the same picture? Recognise re-encoded, resized, lightly cropped or brightened copies of an image,
and tell them from *different* pictures that merely look alike.

Two stages, calibrated by ``bench/near_duplicates.py`` (README, "Near-duplicates of the holdout"):

1. **retrieval**: an 8x8 grayscale thumbnail, mean-removed and unit-norm; candidates are the stored images
   whose cosine similarity reaches ``RETRIEVE_SIMILARITY`` (the best ``RETRIEVE_TOP`` of them). Cheap: one
   matrix-vector product over every stored image.
2. **confirmation**: a copy, once aligned, matches its original in *detail*, not only in outline. Each
   picture is kept as a 64x64 grayscale thumbnail; crops of one (scales 1 to 0.87, nine positions each) are
   resampled to 24x24 and compared with the other's full view, in both directions, after a high-pass filter
   (the image minus its Gaussian blur): the outline that all trousers or all sneakers share is removed, and
   what is left (seams, prints, folds) is what a re-encoding, a resize or a crop keeps and a different
   garment does not. The score is the best normalised correlation over the alignments.

Pure numpy on small arrays: the crops and the blur are matrices, so one comparison is a few matrix products.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

COARSE = 8
BIG = 64
FINE = 24
# A band-pass (difference of Gaussians, in FINE pixels): above LOW_SIGMA, noise a resize or JPEG removes anyway;
# below HIGH_SIGMA, the outline every garment of a kind shares.
LOW_SIGMA = 0.4
HIGH_SIGMA = 1.5
RETRIEVE_SIMILARITY = 0.7
RETRIEVE_TOP = 16
# The confirmed score at which two images are the same picture (calibrated: bench/near_duplicates.py).
SAME_PICTURE = 0.90
_SCALES = (0.96, 0.93, 0.90, 0.87)


@dataclass(frozen=True)
class Likeness:
    coarse: np.ndarray  # (COARSE*COARSE,) float32, mean-removed, unit norm
    big: np.ndarray  # (BIG, BIG) uint8 grayscale

    def to_bytes(self) -> bytes:
        return self.big.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Likeness:
        big = np.frombuffer(data, dtype=np.uint8).reshape(BIG, BIG)
        return cls(_coarse_of(big), big)


def _unit(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float32) - np.float32(v.mean())
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def _coarse_of(big: np.ndarray) -> np.ndarray:
    k = BIG // COARSE
    return _unit(big.astype(np.float32).reshape(COARSE, k, COARSE, k).mean(axis=(1, 3)).ravel())


def likeness(img: Image.Image) -> Likeness:
    """The descriptor of a decoded image (any mode)."""
    big = np.asarray(img.convert("L").resize((BIG, BIG), Image.Resampling.BOX), dtype=np.uint8)
    return Likeness(_coarse_of(big), big)


def _box_matrix(start: float, stop: float, out: int, size: int) -> np.ndarray:
    """Rows average the source pixels [start, stop) (in pixels of ``size``) into ``out`` equal bins."""
    m = np.zeros((out, size), np.float32)
    step = (stop - start) / out
    for i in range(out):
        a, b = start + i * step, start + (i + 1) * step
        for j in range(int(np.floor(a)), min(size, int(np.ceil(b)))):
            m[i, j] = max(0.0, min(b, j + 1) - max(a, j))
        m[i] /= m[i].sum()
    return m


@functools.cache
def _crops() -> np.ndarray:
    """(K, FINE, BIG): one resampling matrix per crop interval along an axis, identity first."""
    spans = [(0.0, 1.0)]
    for s in _SCALES:
        spans += [(o * (1 - s), o * (1 - s) + s) for o in (0.0, 0.5, 1.0)]
    return np.stack([_box_matrix(a * BIG, b * BIG, FINE, BIG) for a, b in spans])


@functools.cache
def _blur(sigma: float) -> np.ndarray:
    """(FINE, FINE): a 1-D Gaussian blur (edges renormalised); G @ X @ G.T blurs an image."""
    if sigma <= 0:
        return np.eye(FINE, dtype=np.float32)
    x = np.arange(FINE, dtype=np.float32)
    g = np.exp(-((x[:, None] - x[None, :]) ** 2) / (2 * sigma**2))
    return (g / g.sum(axis=1, keepdims=True)).astype(np.float32)


def _views(big: np.ndarray, full_only: bool = False) -> np.ndarray:
    """High-passed, unit-norm FINE x FINE views: the full picture, or every crop (rows x columns pairs
    of the same scale, so crops keep their aspect ratio)."""
    crops = _crops()
    x = big.astype(np.float32)
    if full_only:
        rows = cols = crops[:1]
        pairs = [(0, 0)]
    else:
        rows = cols = crops
        pairs = [(0, 0)] + [(1 + 3 * s + i, 1 + 3 * s + j) for s in range(len(_SCALES)) for i in range(3)
                            for j in range(3)]  # fmt: skip
    lo, hi = _blur(LOW_SIGMA), _blur(HIGH_SIGMA)
    views = np.stack([rows[r] @ x @ cols[c].T for r, c in pairs])
    out = (lo @ views @ lo.T - hi @ views @ hi.T).reshape(len(pairs), -1)  # the detail, band-passed
    out -= out.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


def same_picture_score(a: Likeness, b: Likeness) -> float:
    """The best aligned detail correlation of two pictures: about 1 for copies, lower for look-alikes."""
    return _Query(b).score(a)


class _Query:
    """One picture's views, computed once and scored against each retrieved candidate."""

    def __init__(self, item: Likeness):
        self.views = _views(item.big)
        self.full = self.views[0]  # the identity crop comes first

    def score(self, other: Likeness) -> float:
        views = _views(other.big)
        return float(max((views @ self.full).max(), (self.views @ views[0]).max()))


def coarse_similarity(a: Likeness, b: Likeness) -> float:
    return float(a.coarse @ b.coarse)


class LikenessIndex:
    """Stored pictures to match new ones against; ``match`` returns the key of the same picture, or None.

    Retrieval is one matrix-vector product over a contiguous float32 array (64 values a picture, grown by
    doubling); only the few candidates above ``RETRIEVE_SIMILARITY`` are sorted and confirmed. Safe to use
    from several request threads: ``add`` and ``match`` see a consistent array."""

    def __init__(self) -> None:
        self._keys: list[str] = []
        self._items: list[Likeness] = []
        self._coarse = np.zeros((0, COARSE * COARSE), np.float32)
        self._n = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._n

    def add(self, key: str, item: Likeness) -> None:
        with self._lock:
            if self._n == len(self._coarse):  # grow by doubling: adding stays amortised O(1)
                grown = np.zeros((max(64, 2 * self._n), COARSE * COARSE), np.float32)
                grown[: self._n] = self._coarse[: self._n]
                self._coarse = grown
            self._coarse[self._n] = item.coarse
            self._keys.append(key)
            self._items.append(item)
            self._n += 1

    def candidates(self, item: Likeness) -> list[tuple[str, Likeness]]:
        """The stored pictures whose outline is close enough to confirm, most similar first (at most RETRIEVE_TOP)."""
        with self._lock:
            coarse, keys, items = self._coarse[: self._n], self._keys, self._items
        sims = coarse @ item.coarse
        near = np.flatnonzero(sims >= RETRIEVE_SIMILARITY)
        # Stable: among equal similarities the earlier picture comes first, as a scan in insertion order would.
        best = near[np.argsort(-sims[near], kind="stable")[:RETRIEVE_TOP]]
        return [(keys[j], items[j]) for j in best]

    def match(self, item: Likeness, threshold: float = SAME_PICTURE) -> tuple[str, float] | None:
        found = self.candidates(item)
        if not found:
            return None
        query = _Query(item)
        for key, stored in found:
            score = query.score(stored)
            if score >= threshold:
                return key, score
        return None
