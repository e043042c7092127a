"""Annotation model and the readers/writers of the formats CVAT users export and import."""
