"""TorchServe entry point of graft's image classifier (the file a ``.mar`` names as ``--handler``).

The archiver copies this file to the archive's root, where TorchServe imports it as the top-level
module ``image_classifier``. Two traps shape this file:

* TorchServe imports it with ``importlib.import_module`` and, on *any* ImportError, silently falls
  back to its own stock ``image_classifier`` handler. So nothing here is imported at module level
  beyond the standard library: a missing dependency must surface as a load failure inside
  ``handle``, never as an ImportError that swaps the handler.
* A module-level ``handle`` is called once with ``data=None`` at load time; that call initialises.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

_service: Any = None


def handle(data: Any, context: Any) -> list[Any] | None:
    global _service
    if _service is None:
        try:
            from handlers.service import ImageClassifierService
        except ImportError as e:
            # Re-raised as RuntimeError: an ImportError would make TorchServe load its stock handler.
            raise RuntimeError(f"graft handler cannot import its modules: {e}") from e
        service = ImageClassifierService()
        service.initialize(context)
        _service = service
    if data is None:
        return None
    result: list[Any] = _service.handle(data, context)
    return result
