"""TorchServe as graft runs and talks to it.

* :mod:`graft.torchserve.client` — the one client: keys, renewal and retry, management calls, predictions
* :mod:`graft.torchserve.store` — the model store's archives and their versions
* :mod:`graft.torchserve.properties` — ``config.properties`` and the user's additions to it
* :mod:`graft.torchserve.launcher` — the Java frontend as a managed child process
* :mod:`graft.torchserve.pins` / :mod:`graft.torchserve.probe` — default-version pins and the pod's probes

Depends on :mod:`graft.core` only (import-linter checks it), so the inference image needs nothing else.
"""
