"""Is this the same picture? Recognise re-encoded, resized, lightly cropped or brightened copies of an image,
and tell them from *different* pictures that merely look alike.

Two stages, calibrated by ``bench/near_duplicates.py`` against a holdout of 16,000 pictures (README,
"Near-duplicates of the holdout"):

1. **retrieval**: 8x8 grayscale thumbnails, mean-removed and unit-norm, of the whole picture and of five crops
   (the centre and the four corners at 0.93 of each side), so that a lightly cropped copy still finds its
   original among the first ``RETRIEVE_TOP`` candidates when thousands of look-alikes are stored. Candidates
   are the stored pictures whose best view pair reaches ``RETRIEVE_SIMILARITY``: eleven small matrix products
   per block of stored pictures, cache-sized, with a running maximum (0.56 ms of CPU per query against 20,000
   stored, 1.33 ms against 50,000, on this project's 2-core machine).
2. **confirmation**: a copy, once aligned and compared at the resolution both versions still have, differs
   from its original by little more than compression noise and a change of brightness; a different picture
   differs in its detail. Each picture is kept as a 64x64 grayscale thumbnail with its native size. Crops of
   one (scales 1 to 0.87, nine positions each) are resampled to a grid as fine as the smaller of the two
   native sizes (8 to 32 pixels a side), lightly blurred, and matched with the other's full view, in both
   directions; at the best-correlated alignment, the residual after fitting a gain and an offset (grey
   levels, 0-255) decides.

Why the residual and not a correlation: at 16,000 stored Fashion-MNIST garments, distinct look-alikes reach
correlations as high as a JPEG copy's, but their residual stays larger (bench/results/near_duplicates.json).

Pure numpy on small arrays: the crops are matrices, so one comparison is a few matrix products.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image

COARSE = 8
BIG = 64
GRID_MIN, GRID_MAX = 8, 32
# Retrieval: at most RETRIEVE_TOP stored pictures whose outline similarity reaches RETRIEVE_SIMILARITY are
# confirmed. Calibrated (bench/near_duplicates.py, "retrieval"): every altered copy of 400 pictures, in both
# domains, found its original first, at a similarity of 0.980 or more; look-alikes crowd in below that.
RETRIEVE_SIMILARITY = 0.9
RETRIEVE_TOP = 4
# The largest residual (grey levels, RMS after a gain/offset fit) of the same picture, and the smallest
# correlation. The floor guards pictures whose grey levels vary little (nearly flat ones, dark low-contrast
# garments): their residual is small whatever they show. Calibrated (bench/near_duplicates.py): every altered
# copy correlates with its original at 0.9846 or more (ants/bees at 0.8x the least), while the distinct dark
# shirts and T-shirts pinned at 0.95 among 100,000 uploads reached 0.952-0.972.
SAME_PICTURE_RESIDUAL = 6.0
SAME_PICTURE_CORRELATION = 0.975
# Both views are blurred this much (grid pixels) before the residual: JPEG's block noise is finer than this,
# while the detail that tells two garments apart is not.
BLUR_SIGMA = 0.8
_SCALES = (0.99, 0.98, 0.96, 0.93, 0.90, 0.87)
# Retrieval views: the whole picture, then crops at this scale (centre, then the four corners).
_RETRIEVE_SCALE = 0.93
_RETRIEVE_SPOTS = ((0.5, 0.5), (0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0))
VIEWS = 1 + len(_RETRIEVE_SPOTS)


@dataclass(frozen=True)
class Likeness:
    coarse: np.ndarray  # (VIEWS, COARSE*COARSE) float32: the whole picture first, then its crops; unit norm
    big: np.ndarray  # (rows, columns) uint8 grayscale, at most BIG a side: small pictures keep their own pixels
    size: tuple[int, int]  # the decoded picture's width and height


class Comparison(NamedTuple):
    correlation: float  # at the best alignment, -1 to 1
    residual: float  # grey levels (RMS) left after fitting a gain and an offset at that alignment

    @property
    def same(self) -> bool:
        return self.correlation >= SAME_PICTURE_CORRELATION and self.residual <= SAME_PICTURE_RESIDUAL


def _centred_and_unit(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row with its mean removed, and that again scaled to unit norm (a flat row stays zero)."""
    centred = rows - rows.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return centred, centred / np.where(norms > 0, norms, 1.0)


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


@functools.lru_cache(maxsize=256)
def _retrieve_crops(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(VIEWS, COARSE, n) matrices along an axis of ``n`` pixels: the whole picture, then each retrieval crop
    (rows take the spot's second coordinate, columns its first)."""
    c = _RETRIEVE_SCALE * n
    whole = _box_matrix(0, n, COARSE, n)
    rows = [whole] + [_box_matrix(y * (n - c), y * (n - c) + c, COARSE, n) for _, y in _RETRIEVE_SPOTS]
    cols = [whole] + [_box_matrix(x * (n - c), x * (n - c) + c, COARSE, n) for x, _ in _RETRIEVE_SPOTS]
    return np.stack(rows), np.stack(cols)


def _coarse_views(big: np.ndarray) -> np.ndarray:
    rows, cols = _retrieve_crops(big.shape[0])[0], _retrieve_crops(big.shape[1])[1]
    return _centred_and_unit((rows @ big.astype(np.float32) @ cols.transpose(0, 2, 1)).reshape(VIEWS, -1))[1]


def likeness(img: Image.Image) -> Likeness:
    """The descriptor of a decoded image (any mode)."""
    gray = img.convert("L")
    shape = (min(img.width, BIG), min(img.height, BIG))
    if shape != gray.size:  # a small picture keeps its own pixels: resampling it up would blur copies apart
        gray = gray.resize(shape, Image.Resampling.BOX)
    big = np.asarray(gray, dtype=np.uint8)
    return Likeness(_coarse_views(big), big, (img.width, img.height))


@functools.lru_cache(maxsize=1024)
def _crops(grid: int, n: int) -> np.ndarray:
    """(K, grid, n): one resampling matrix per crop interval along an axis of ``n`` pixels, identity first."""
    spans = [(0.0, 1.0)]
    for s in _SCALES:
        spans += [(o * (1 - s), o * (1 - s) + s) for o in (0.0, 0.5, 1.0)]
    return np.stack([_box_matrix(a * n, b * n, grid, n) for a, b in spans])


# Crop pairs (row interval, column interval) of the same scale, so that crops keep their aspect ratio.
_PAIRS = [(0, 0)] + [(1 + 3 * s + i, 1 + 3 * s + j) for s in range(len(_SCALES)) for i in range(3) for j in range(3)]
_ROWS, _COLS = [r for r, _ in _PAIRS], [c for _, c in _PAIRS]


def _grid(a: Likeness, b: Likeness) -> int:
    """The finest grid both pictures still fill: a 0.8x copy of a 28-pixel garment is compared at 22 pixels."""
    return max(GRID_MIN, min(GRID_MAX, *a.size, *b.size))


@functools.lru_cache(maxsize=64)
def _blur(grid: int) -> np.ndarray:
    """(grid, grid): a 1-D Gaussian blur of BLUR_SIGMA pixels (edges renormalised); B @ X @ B.T blurs an image."""
    if BLUR_SIGMA <= 0:
        return np.eye(grid, dtype=np.float32)
    x = np.arange(grid, dtype=np.float32)
    g = np.exp(-((x[:, None] - x[None, :]) ** 2) / (2 * BLUR_SIGMA**2))
    return (g / g.sum(axis=1, keepdims=True)).astype(np.float32)


@functools.lru_cache(maxsize=1024)
def _blurred_crops(grid: int, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(pairs, grid, rows) and (pairs, cols, grid): each aligned crop's resampling and blur, composed once per
    shape, so a comparison is two batched products: left @ picture @ right."""
    b = _blur(grid)
    return b @ _crops(grid, rows)[_ROWS], _crops(grid, cols)[_COLS].transpose(0, 2, 1) @ b.T


def _views(big: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Every aligned crop resampled to ``grid`` x ``grid`` and blurred: mean-removed, and unit-norm too."""
    left, right = _blurred_crops(grid, *big.shape)
    return _centred_and_unit((left @ big.astype(np.float32) @ right).reshape(len(_PAIRS), -1))


def _compare(qa: tuple[np.ndarray, np.ndarray], qb: tuple[np.ndarray, np.ndarray]) -> Comparison:
    (ca, ua), (cb, ub) = qa, qb
    into_b, into_a = ub @ ua[0], ua @ ub[0]  # b's crops against a's whole view, and the other way round
    if into_b.max() >= into_a.max():
        x, y, r = ca[0], cb[int(into_b.argmax())], float(into_b.max())
    else:
        x, y, r = ca[int(into_a.argmax())], cb[0], float(into_a.max())
    gain = float(x @ y) / max(float(x @ x), 1e-6)  # y ~ gain * x + offset (both are centred)
    residual = float(np.sqrt(np.mean((y - gain * x) ** 2)))
    return Comparison(r, residual)


def compare(a: Likeness, b: Likeness) -> Comparison:
    """Aligned correlation and residual of two pictures: a copy has a small residual, a look-alike a larger one."""
    grid = _grid(a, b)
    return _compare(_views(a.big, grid), _views(b.big, grid))


class _Query:
    """One picture's views per grid, computed once and compared with each retrieved candidate."""

    def __init__(self, item: Likeness):
        self.item = item
        self._views: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def compare(self, other: Likeness) -> Comparison:
        grid = _grid(self.item, other)
        if grid not in self._views:
            self._views[grid] = _views(self.item.big, grid)
        return _compare(self._views[grid], _views(other.big, grid))


def coarse_similarity(a: Likeness, b: Likeness) -> float:
    """The best outline similarity of the whole of one picture with the whole or a crop of the other."""
    return float(max((a.coarse @ b.coarse[0]).max(), (b.coarse @ a.coarse[0]).max()))


_NO_VIEWS = np.zeros((0, COARSE * COARSE), np.float32)
# Stored pictures per product: a block's views (6 x 4096 x 64 floats) and its (4096 x batch) answers stay in
# the processor's cache, which makes the running maximum over the eleven view pairs cheap.
_BLOCK = 4096


def _top(col: np.ndarray) -> np.ndarray:
    """Indices of the RETRIEVE_TOP largest values at or above RETRIEVE_SIMILARITY, largest first, the earlier
    index first among equal values (as a scan in insertion order would): a partition, not a sort of them all."""
    near = np.flatnonzero(col >= RETRIEVE_SIMILARITY)
    if len(near) > RETRIEVE_TOP:
        vals = col[near]
        kth = np.partition(vals, len(vals) - RETRIEVE_TOP)[len(vals) - RETRIEVE_TOP]
        above, tied = near[vals > kth], near[vals == kth]  # near is in index order, so tied keeps the earliest
        near = np.concatenate([above, tied[: RETRIEVE_TOP - len(above)]])
    return near[np.lexsort((near, -col[near]))]


class LikenessIndex:
    """Stored pictures to match new ones against; ``match`` returns the key of the same picture, or None.

    Retrieval is eleven small matrix products per block of stored pictures (each view of the query against the
    stored whole views, the query's whole view against each stored crop view) over contiguous float32 arrays
    grown by doubling, with a running maximum; only the few candidates above ``RETRIEVE_SIMILARITY`` are
    confirmed. Safe to use from several request threads: ``add`` and ``match`` see consistent arrays."""

    def __init__(self) -> None:
        self._keys: list[str] = []
        self._items: list[Likeness] = []
        self._views = np.zeros((VIEWS, 0, COARSE * COARSE), np.float32)  # view-major: each view one matrix
        self._n = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._n

    def add(self, key: str, item: Likeness) -> None:
        with self._lock:
            if self._n == self._views.shape[1]:  # grow by doubling: adding stays amortised O(1)
                views = np.zeros((VIEWS, max(64, 2 * self._n), COARSE * COARSE), np.float32)
                views[:, : self._n] = self._views[:, : self._n]
                self._views = views  # a reader holding the old array still sees its first _n rows unchanged
            self._views[:, self._n] = item.coarse
            self._keys.append(key)
            # The outline views live in the array above; the item keeps only what confirmation reads (at
            # 100,000 stored pictures that is 150 MB less).
            self._items.append(Likeness(_NO_VIEWS, item.big, item.size))
            self._n += 1

    def similarities(self, items: Sequence[Likeness]) -> np.ndarray:
        """(stored, len(items)): the best outline similarity of each stored picture with each item (as
        coarse_similarity). One pass over the stored arrays for the whole batch."""
        with self._lock:
            n, stored = self._n, self._views
        b = len(items)
        out = np.zeros((n, b), np.float32)
        if n == 0 or b == 0:
            return out
        queries = np.stack([it.coarse for it in items], axis=1)  # (VIEWS, b, 64)
        asked = [np.ascontiguousarray(q.T) for q in queries]  # (64, b) per view of the items
        scratch = np.empty((min(n, _BLOCK), b), np.float32)
        for lo in range(0, n, _BLOCK):
            hi = min(n, lo + _BLOCK)
            best, tmp = out[lo:hi], scratch[: hi - lo]
            np.matmul(stored[0, lo:hi], asked[0], out=best)  # whole against whole
            for v in range(1, VIEWS):
                np.maximum(best, np.matmul(stored[0, lo:hi], asked[v], out=tmp), out=best)  # a crop of the item
                np.maximum(best, np.matmul(stored[v, lo:hi], asked[0], out=tmp), out=best)  # a crop of the stored
        return out

    def candidates(self, items: Sequence[Likeness]) -> list[list[tuple[str, Likeness]]]:
        """Per item: the stored pictures whose outline is close enough to confirm, most similar first (at most
        RETRIEVE_TOP)."""
        sims = self.similarities(items)
        keys, stored = self._keys, self._items
        out = []
        for col in sims.T:
            out.append([(keys[j], stored[j]) for j in _top(col)])
        return out

    def comparisons(
        self, item: Likeness, found: Sequence[tuple[str, Likeness]] | None = None
    ) -> Iterator[tuple[str, Comparison]]:
        """Each retrieved candidate (``found``, else retrieved now), most similar first, with how it compared
        (lazily: a match stops early)."""
        query = _Query(item)
        for key, stored in found if found is not None else self.candidates([item])[0]:
            yield key, query.compare(stored)

    def match_many(self, items: Sequence[Likeness]) -> list[tuple[str, Comparison] | None]:
        """Per item, the first retrieved candidate that is the same picture, with how it compared, or None."""
        return [next(((key, c) for key, c in self.comparisons(item, found) if c.same), None)
                for item, found in zip(items, self.candidates(items), strict=True)]  # fmt: skip

    def match(self, item: Likeness) -> tuple[str, Comparison] | None:
        return self.match_many([item])[0]
