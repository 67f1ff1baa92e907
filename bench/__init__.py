"""Benchmarks (not imported by the service). Run with ``python -m bench.<name>``."""
