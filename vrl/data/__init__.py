"""Data sources, clip sampling, augmentation, masks and the Grain pipeline."""
