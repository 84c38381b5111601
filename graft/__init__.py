"""graft: transfer learning from a model zoo to TorchServe, with a retraining loop."""

__version__ = "0.1.0"
