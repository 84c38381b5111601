"""Where training runs: a local child process (default) or a Kubernetes Job, behind
:class:`admin.runners.base.JobRunner`."""
