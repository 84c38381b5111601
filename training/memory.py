"""Handing the memory a batch freed back to the operating system, so a long pass over images stays at one
batch's worth of resident memory.

A forward pass of a batch allocates and frees a few hundred MB of activations. glibc's malloc keeps what is
freed for reuse: buffers over its mmap threshold go straight back, but the threshold rises to the largest
buffer freed so far (up to 32 MiB), after which most activations come from the heap, and a freed heap
chunk goes back only when it is at the top. The chunks each batch keeps (its cached features, its targets)
land between them, so the heap's resident size creeps up over the batches of a pass: on ``graft train``'s
4,000-image feature pass (Fashion-MNIST, mobilenet_v2) the heap grew from 0.6 GB to 2.1 GB and the run peaked
at 3.06 GB (docs/scale-captures.md). Most of it was free: in a run where another thread read ``mallinfo2``
every half second (which consolidates the free chunks) the heap stayed near 250 MB, 200 MB of it in use.
``malloc_trim(0)`` consolidates and returns every whole free page of every arena (the middle of the heap
too, not only its top). Elsewhere than glibc (macOS, musl) this is a no-op.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)  # glibc only
    if trim is None:
        log.debug("no malloc_trim in this C library: freed memory stays with the allocator")
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


def release_freed_memory() -> bool:
    """Return the allocator's free pages to the operating system; whether any were returned."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


def can_release_memory() -> bool:
    """Whether :func:`release_freed_memory` does anything here (glibc's ``malloc_trim`` is there)."""
    return _malloc_trim() is not None
