"""The project's error types. Only these (and OSError for the file system) escape the readers.

Every message is one line that names the problem and, where there is one, the file.
"""


class HemgsError(Exception):
    """Base of every error the project raises on purpose."""


class InputError(HemgsError):
    """A file or argument the user gave us is missing, truncated, foreign or invalid."""


class FormatError(InputError):
    """A file is not of the format we expected, or is corrupt or truncated."""


class SceneError(InputError):
    """Scene data is inconsistent (shapes) or invalid (NaN/Inf, zero quaternions, ...)."""


class IntegrityError(FormatError):
    """A checksum did not match: the file was damaged after it was written."""


def one_line(exc: BaseException) -> str:
    """An error as the one line the CLI prints and the worker sends (an OSError names its file)."""
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror or exc.__class__.__name__}: {exc.filename}"
    return " ".join(str(exc).split()) or exc.__class__.__name__
