"""MMC4's image-to-sentence assignment."""

from mmc4_assets.assign.linear import Assignment, assign_images

__all__ = ["Assignment", "assign_images"]
