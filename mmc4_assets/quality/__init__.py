"""Data-quality rules over stored tables: plain functions, no Dagster (the checks call them)."""
