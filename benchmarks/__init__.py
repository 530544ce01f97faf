"""Benchmarks: ``python -m benchmarks <name>``; results go to docs/benchmarks.rst."""
