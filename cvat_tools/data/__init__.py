"""Data sets, splits and crop caches: PBC, BCCD, JTSC, crop folders, CVAT/COCO exports.

Read by training, evaluation and the commands alike; nothing here imports ``train/``.
"""
