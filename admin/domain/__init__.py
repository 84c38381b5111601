"""The control plane's rules: sample intake and split, dataset snapshots, the recipe of a retraining,
the gate, promotion and the job state machine; :class:`admin.domain.service.AdminService` composes them."""
