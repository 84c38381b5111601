"""JPEG decoding on the GPU (nvjpeg) for workers that have one; every other image takes the CPU path
(:func:`graft.core.images.decode_rgb`), which also classifies what is wrong with a bad image."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from graft.core.images import JPEG_FORMATS, Header

log = logging.getLogger(__name__)


def gpu_decodable(head: Header) -> bool:
    """JPEGs nvjpeg handles: baseline/progressive YCbCr or grayscale (CMYK goes to the CPU path)."""
    return head.format in JPEG_FORMATS and head.mode in ("RGB", "L")


def decode_jpegs_gpu(payloads: Sequence[bytes], device: Any) -> list[Any]:
    """Batch-decode JPEGs on the GPU (nvjpeg) to uint8 CHW RGB tensors; None where nvjpeg failed."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    if not payloads:
        return []
    tensors = [torch.frombuffer(bytearray(p), dtype=torch.uint8) for p in payloads]
    try:
        return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        log.warning("nvjpeg batch decode failed; decoding these %d images one by one", len(payloads), exc_info=True)
    out: list[Any] = []
    for t in tensors:
        try:
            out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            out.append(None)  # the caller decodes it on the CPU, which also classifies the error
    return out
