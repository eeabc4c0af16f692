"""Text handling: sentence splitting and MMC4's image URL filter."""
