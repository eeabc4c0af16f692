"""Image classifiers over stored CLIP image features (MMC4's NSFW MLP and face filter)."""
