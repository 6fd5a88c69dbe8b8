"""
The errors that are the user's to fix, which every `cgd` command reports in one line with exit status 2. Anything
else that escapes a command is a bug: it shows its traceback and exits 1.
"""

from __future__ import annotations


class UsageError(ValueError):
    """A mistake of the user's in flags or configuration, reported in one line (exit status 2)."""


class MissingDependency(ImportError):
    """An optional dependency a feature needs is not installed; the message names what to install."""


# A bad value, setting, record or file, or an optional dependency to install. A plain `KeyError` is not among them,
# nor an `ImportError` of the project's own code (`cgd_trainer.cli` tells it from a package that is not installed): a
# one-line message would hide where the bug is.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, MissingDependency)
