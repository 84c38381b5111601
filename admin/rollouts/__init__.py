"""How a version goes into service: TorchServe's management API (default) or a Kubernetes rolling update,
behind :class:`admin.rollouts.base.Rollout`."""
