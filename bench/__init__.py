"""Benchmarks (plain Python scripts, not tests)."""
