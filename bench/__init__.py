"""Benchmarks: `make bench` (python -m bench). Prints a table and writes docs/benchmarks.md."""
