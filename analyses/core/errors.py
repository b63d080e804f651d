"""The one user-facing error type.

Anything a user can cause (a wrong path, a file that is not a model, an argument out of
range) raises :class:`NNVitalsError` with a message that names the file or argument and
says what was expected. The CLI prints it as one line and exits non-zero; the app shows it
in a notification. Any other exception is a bug in nnvitals.
"""

from __future__ import annotations


class NNVitalsError(ValueError):
    """A problem with the user's input, with a message that says what to do about it."""

    def __init__(self, message: str, *, hint: str | None = None):
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")


class Cancelled(NNVitalsError):
    """Raised inside a run when its cancellation token was set."""

    def __init__(self, message: str = "run cancelled"):
        super().__init__(message)
