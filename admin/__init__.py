"""The control plane: samples, retraining jobs, the gate, promotion and rollback.

Layers (import-linter checks them): ``api`` -> ``domain`` -> ``runners`` | ``rollouts`` -> ``store``;
``settings``, ``metrics`` and ``cluster`` (the Kubernetes client settings) sit beside them.
"""
