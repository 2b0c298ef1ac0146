"""Errors every stage shares.

A ``SsmcError`` is a user-facing problem (bad input, missing file, unknown name): the CLI
prints its message on one line, with no traceback, and exits with status 2. Anything else
escaping a command is a bug in ssmc and keeps its traceback.
"""


class SsmcError(Exception):
    """A problem the user can fix; the message names the problem in one line."""


class DatasetError(SsmcError):
    """A dataset that cannot be read or does not hold what it must."""


class ConfigError(SsmcError):
    """An unknown name or an invalid configuration value."""


class ArtifactError(SsmcError):
    """A compiled artifact that is missing, tampered with, incomplete or of another format version."""
