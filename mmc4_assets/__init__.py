"""mmc4-assets: Dagster assets that rebuild MMC4-style interleaved image-text corpora."""

__version__ = "0.1.0"
