"""User-facing error types.

Anything a user can cause (a bad recipe, a missing file, an absent optional
package, a wrong shape) is a `RichKDError`: the CLI prints its message on one line
and exits with `exit_code` (2), never a traceback. Any other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations


class RichKDError(Exception):
    """An error the user can fix; the message must say what to do."""

    exit_code = 2


class RecipeError(RichKDError):
    """A recipe key has a bad value, is unknown, or is missing."""


class DataError(RichKDError):
    """A dataset cannot be found, read or matched to the recipe."""


class CheckpointError(RichKDError):
    """A checkpoint is missing, corrupt, unsafe, or for another model."""


class ArtifactError(RichKDError):
    """An exported artifact is missing, changed since export, or unusable."""


class MissingDependencyError(RichKDError):
    """An optional package (tensorrt, onnxruntime, ...) is not installed."""


class RunError(RichKDError):
    """A run folder is missing, locked by another process, or not writable."""
