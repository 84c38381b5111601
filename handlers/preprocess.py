"""Encoded images -> model input tensors on the worker's device, one result (or error) per image.

The transform is ``graft.core.transforms.eval_transform(card.preprocessing)``: exactly what training
validated with. What this module adds is only *how* pixels get decoded: PIL with JPEG draft
(reduced-size decoding) on the CPU, or nvjpeg on the GPU for JPEGs that end cleanly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from graft.core.errors import BadInputError, GraftError
from graft.core.images import decode_rgb, header, open_image
from graft.core.preprocessing import Preprocessing
from graft.core.transforms import eval_transform
from handlers.gpu_decode import decode_jpegs_gpu, gpu_decodable

log = logging.getLogger(__name__)

Result = torch.Tensor | GraftError
JPEG_EOI = b"\xff\xd9"


def _ends_cleanly(payload: bytes) -> bool:
    # nvjpeg may decode a truncated JPEG into grey garbage instead of failing; only JPEGs that end with
    # their end-of-image marker go to the GPU, the rest take the CPU path where PIL detects truncation.
    return payload.rstrip(b"\x00")[-2:] == JPEG_EOI


class Preprocessor:
    def __init__(
        self,
        preprocessing: Preprocessing,
        device: torch.device,
        max_pixels: int,
        fast_decode: bool = True,
        gpu_decode: bool = False,
    ) -> None:
        self.transform = eval_transform(preprocessing)
        self.device = device
        self.max_pixels = max_pixels
        # Draft keeps both sides >= resize, so the short side still gets resized down (never up) to it.
        self.draft_size = int(preprocessing.resize) if fast_decode else None
        self.gpu_decode = gpu_decode and device.type == "cuda"
        # Transparency is composited as training composited it (nvjpeg only sees JPEGs, which have none).
        self.background = preprocessing.background

    def __call__(self, payloads: Sequence[bytes]) -> list[Result]:
        results: list[Result | None] = [None] * len(payloads)
        if self.gpu_decode:
            self._decode_on_gpu(payloads, results)
        for i, payload in enumerate(payloads):
            if results[i] is None:
                results[i] = self._on_cpu(payload)
        return [r for r in results if r is not None]

    def _on_cpu(self, payload: bytes) -> Result:
        try:
            image = decode_rgb(payload, self.max_pixels, self.draft_size, self.background)
        except BadInputError as e:
            return e
        return self._transform(image)

    def _transform(self, image: Any) -> Result:
        try:
            tensor: torch.Tensor = self.transform(image)
            return tensor.to(self.device, non_blocking=True)
        except Exception as e:  # an input-dependent failure must fail this image only, not the batch
            log.exception("preprocessing failed for one image")
            return GraftError(f"could not preprocess this image: {type(e).__name__}")

    def _decode_on_gpu(self, payloads: Sequence[bytes], results: list[Result | None]) -> None:
        chosen: list[int] = []
        for i, payload in enumerate(payloads):
            try:
                img = open_image(payload, self.max_pixels)  # header only: limits are checked before decoding
            except BadInputError as e:
                results[i] = e
                continue
            head = header(img)
            img.close()
            if gpu_decodable(head) and _ends_cleanly(payload):
                chosen.append(i)
        decoded = decode_jpegs_gpu([payloads[i] for i in chosen], self.device)
        for i, tensor in zip(chosen, decoded, strict=True):
            if tensor is not None:
                results[i] = self._transform(tensor)
