"""Every image of a data set decoded once: what it is (size, mode, transparency, hashes) or why it is skipped.

``graft train`` keeps the files that decode here and records the others with their reasons; ``graft check``
reports on the same facts. A header check alone lets truncated files through (they failed later, in the
export's ONNX check), so every kept file is decoded in full; JPEGs at reduced scale, which still reads
every byte of the stream.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from graft.core.errors import BadInputError
from graft.core.images import Header, decode_frame, difference_hash, flatten, has_transparency, thumbnail
from graft.core.preprocessing import WHITE

log = logging.getLogger(__name__)

# JPEGs decode at up to 1/8 scale while both sides stay >= this: the hashes need no more, truncation is caught.
DRAFT_SIZE = 64
# A picture whose composited grey levels span less than this is one flat colour (white icons on a white
# background, an all-black frame).
BLANK_RANGE = 8
# PIL decodes with the GIL released: threads overlap the decoding of several files.
MAX_THREADS = 8


@dataclass(frozen=True)
class Skipped:
    """A file left out, and why (the decoder's own words)."""

    path: Path
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"path": str(self.path), "reason": self.reason}


@dataclass(frozen=True)
class ImageFacts:
    header: Header  # as stored: format, width, height, mode
    transparent: bool  # some pixel is not fully opaque
    blank: bool  # one flat colour once composited on the background
    sha256: str  # of the file's bytes: exact duplicates
    dhash: int  # 64-bit difference hash of the composited picture: near-duplicates
    thumb: bytes  # 16x16 grayscale: confirms what the coarse hash suggests


def examine(path: Path, background: tuple[int, int, int] = WHITE) -> ImageFacts:
    """Decode one file in full; BadInputError or OSError when it cannot be used."""
    data = Path(path).read_bytes()
    head, img = decode_frame(data, draft_size=DRAFT_SIZE)
    try:
        transparent = has_transparency(img)
        rgb = flatten(img, background)
    finally:
        img.close()
    low, high = rgb.convert("L").getextrema()
    return ImageFacts(
        header=head,
        transparent=transparent,
        blank=int(high) - int(low) < BLANK_RANGE,  # type: ignore[arg-type]
        sha256=hashlib.sha256(data).hexdigest(),
        dhash=difference_hash(rgb),
        thumb=thumbnail(rgb),
    )


def _examine_or_reason(path: Path, background: tuple[int, int, int]) -> ImageFacts | str:
    try:
        return examine(path, background)
    except (BadInputError, OSError, ValueError) as e:  # ValueError: a mode PIL cannot convert
        return str(e) or type(e).__name__


def scan_files(
    paths: Sequence[Path], background: tuple[int, int, int] = WHITE
) -> tuple[dict[Path, ImageFacts], list[Skipped]]:
    """(facts of every file that decodes, the others with their reasons), decoded on a few threads."""
    threads = max(1, min(MAX_THREADS, os.cpu_count() or 1, len(paths)))
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(lambda p: _examine_or_reason(p, background), paths))
    facts: dict[Path, ImageFacts] = {}
    skipped: list[Skipped] = []
    for path, result in zip(paths, results, strict=True):
        if isinstance(result, ImageFacts):
            facts[path] = result
        else:
            skipped.append(Skipped(path, result))
    return facts, skipped
