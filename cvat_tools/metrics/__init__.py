"""Scores: COCO-style mask AP and Dice for the segmenter, per-class F1 for the classifiers."""
