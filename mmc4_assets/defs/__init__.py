"""The thin Dagster layer; every module here is loaded by ``definitions.py``."""
