"""Measuring tools, each run from the repository root as `python -m bench.NAME` (bench/README.md maps them)."""
