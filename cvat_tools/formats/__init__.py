"""Annotation model and the readers/writers of the formats CVAT users export and import.

``read_annotations`` / ``open_annotations`` / ``write_annotations`` / ``detect_format`` (in
``formats.io``) are importable from here; they load lazily so that importing the model
(``formats.annotations``) stays cheap.
"""

_IO_NAMES = ("read_annotations", "open_annotations", "write_annotations", "detect_format", "FORMATS")


def __getattr__(name):
    if name in _IO_NAMES:
        from . import io

        return getattr(io, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
