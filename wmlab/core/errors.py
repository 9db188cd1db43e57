"""Errors a user can act on. Each message says what was wrong and what to do instead."""


class WmlabError(Exception):
    """Base class for errors raised on bad user input."""


class IncompatibleSpaceError(WmlabError, ValueError):
    """An algorithm or model was given an observation or action space it cannot take."""


class RunDirectoryError(WmlabError):
    """A run directory is missing, corrupt, or already holds a run (pass --force to replace it)."""


class ShapeError(WmlabError, ValueError):
    """A tensor entering a module does not have the documented shape."""


class DatasetError(WmlabError):
    """A dataset directory is missing, unfinished, corrupt, or does not fit the request."""


class ConfigError(WmlabError, ValueError):
    """A setting is out of its allowed range; the message names the field, the value and the range."""
