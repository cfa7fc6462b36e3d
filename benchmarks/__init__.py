"""Benchmarks (not tests): ``python -m benchmarks.compare --json OUT`` and the per-topic scripts."""
