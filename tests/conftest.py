"""The shared fixtures live in tests/support/fixtures.py; importing them here makes them visible to every test."""

from tests.support.fixtures import free_port, hymenoptera, int8_artifacts, java, mobilenet_weights, serving_artifacts

__all__ = ["free_port", "hymenoptera", "int8_artifacts", "java", "mobilenet_weights", "serving_artifacts"]
