"""Benchmarks run by `wmlab bench NAME`; results go to docs/benchmarks.md."""
