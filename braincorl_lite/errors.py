"""The package's own exception types.

Every error that a user can fix (a bad argument, a damaged file, a run folder in the wrong state)
is raised as a subclass of :class:`BraInCoRLError`, with a message that names what is wrong and what
to do next. The command line prints such errors as one line and exits non-zero; any other exception
is a programming error and keeps its traceback.

The subclasses also derive from the built-in type that fits them (``ValueError``, ``OSError``...),
so ``except ValueError`` in user code keeps working.
"""

from __future__ import annotations

__all__ = ["BraInCoRLError", "ConfigError", "RunDirError", "NonFiniteError"]


class BraInCoRLError(Exception):
    """Base class of the errors a user can fix; the command line shows them without a traceback."""


class ConfigError(BraInCoRLError, ValueError):
    """An argument or a configuration value that cannot work (checked before any expensive work)."""


class RunDirError(BraInCoRLError, RuntimeError):
    """A training run folder that cannot be used as asked (locked, other recipe, damaged)."""


class NonFiniteError(BraInCoRLError, FloatingPointError):
    """A loss, a weight or a result that is NaN or infinite."""
