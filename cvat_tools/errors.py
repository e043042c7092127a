"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""


class CvatToolsError(Exception):
    """Base class: the message names the file and what to do."""


class InputError(CvatToolsError):
    """A file or folder given by the user is missing, malformed or hostile."""


class ImageError(InputError):
    """An image cannot be read safely (corrupt, too large, unsupported mode)."""


class BundleError(CvatToolsError):
    """A model bundle is missing, corrupt, or does not fit the label set."""


class Interrupted(CvatToolsError):
    """Ctrl-C during long work: the message says what was kept and how to continue (exit 130)."""
