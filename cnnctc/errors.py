"""Errors the package raises for conditions a user can act on (the CLI prints them on one line)."""


class CnnctcError(Exception):
    """Base class: a problem with the user's input, files or network, not a bug."""


class ManifestError(CnnctcError):
    """The manifest is missing, unreadable or incomplete."""


class DownloadError(CnnctcError):
    """The asset could not be fetched."""


class OfflineError(DownloadError):
    """Offline mode is on and the verified asset is not in the cache."""


class IntegrityError(CnnctcError):
    """A file's SHA-256 differs from the one the manifest names."""


class CheckpointError(CnnctcError):
    """A checkpoint is missing, unreadable, or does not fit the network."""


class OutputError(CnnctcError):
    """The results could not be written (standard output closed, the disk full)."""
