"""graft's handler on KServe's Python model server: ``graft serve --runtime kserve``.

The same archive (``.mar`` or its unpacked folder), the same handler (:mod:`handlers.service`), served
over KServe v1, the Open Inference Protocol v2 (REST and gRPC) without TorchServe's Java frontend.
Nothing here imports ``kserve`` at import time except :mod:`graft.kserve.model` and
:mod:`graft.kserve.server`, which only the runtime's own process loads.
"""
