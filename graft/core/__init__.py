"""graft's ground floor: the contracts every other package shares, importing nothing else of ours.

* :mod:`graft.core.artifact` — the run folder (``model.json`` = :class:`ModelCard`, weights, ``load_model``)
* :mod:`graft.core.preprocessing` — the one :class:`Preprocessing` type; :mod:`graft.core.transforms` applies it
* :mod:`graft.core.zoo` — backbones by name, heads, stages
* :mod:`graft.core.images` — the one image-acceptance policy and decode function
* :mod:`graft.core.manifest` — dataset manifests (the admin writes them, training reads them)
* :mod:`graft.core.handler_settings` — the ``handler:`` section of an archive's ``model-config.yaml``
* :mod:`graft.core.metrics` — the handler's metric table (the launcher declares it, the handler emits it)
* :mod:`graft.core.errors` — typed errors with their HTTP status

This package (with ``graft/__init__.py``) is copied whole into every ``.mar``: keep it light.
"""
