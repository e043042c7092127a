"""Data sets, augmentations, training loops and evaluation metrics."""
