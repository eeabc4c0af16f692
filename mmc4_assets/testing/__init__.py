"""Helpers for tests, the bundled sample and the benchmarks (no Dagster, nothing at import time)."""
