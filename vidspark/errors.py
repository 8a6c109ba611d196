"""Exception classes raised by vidspark, one module so callers can catch them precisely.

Each class carries the process exit code the CLI and the jobs use for it, so that a scheduler
(cron, Airflow) can tell a bad argument from an unreachable bucket from a dirty input.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_STORAGE = 3
EXIT_ERROR_FRACTION = 4
EXIT_ENVIRONMENT = 5


class VidsparkError(Exception):
    """Base class of every error vidspark raises on purpose."""

    exit_code = 1


class ConfigError(VidsparkError, ValueError):
    """A conf key, a command-line argument or a layout template is not valid."""

    exit_code = EXIT_USAGE


class LayoutError(ConfigError):
    """A layout template cannot be compiled."""


class EnvironmentProblem(VidsparkError):
    """The machine lacks something vidspark needs (Java, a library, the model weights)."""

    exit_code = EXIT_ENVIRONMENT


class WeightsUnavailable(EnvironmentProblem):
    """The featurizer's weights cannot be had: not cached, hub unreachable, file missing."""


class DeviceError(EnvironmentProblem):
    """The model's device failed: out of memory, or a CUDA error. The task fails (Spark retries it); never an errors row."""

    def __init__(self, message: str, *, out_of_memory: bool = False) -> None:
        super().__init__(message)
        self.out_of_memory = out_of_memory


class StorageError(VidsparkError):
    """The input or output storage cannot be reached, or a bucket/folder does not exist."""

    exit_code = EXIT_STORAGE


class ModelError(VidsparkError):
    """A model directory is missing, unreadable, or does not match the features."""

    exit_code = EXIT_USAGE


class TrainingDataError(VidsparkError):
    """The labeled features cannot train a classifier (too few classes or rows)."""

    exit_code = EXIT_USAGE


class ErrorFractionExceeded(VidsparkError):
    """More inputs failed than `job.max_error_fraction` allows; outputs were still written."""

    exit_code = EXIT_ERROR_FRACTION


MESSAGE_LIMIT = 2000


def error_message(exc: BaseException | str) -> str:
    """An exception's text as an ``errors`` row keeps it: at most :data:`MESSAGE_LIMIT` characters."""
    return str(exc)[:MESSAGE_LIMIT]


def known_failure(exc: BaseException) -> VidsparkError | None:
    """The vidspark error inside an exception that Spark raised for a failed task, if there is one.

    An executor's ``ModelError`` reaches the driver as a ``PythonException`` (or a ``Py4JJavaError``)
    whose text holds the worker's traceback ending in ``vidspark.errors.ModelError: ...``; the
    job then ends with that one line and that class's exit code, not the stack traces around it.
    """
    if isinstance(exc, VidsparkError):
        return exc
    import re

    found = re.findall(r"vidspark\.errors\.(\w+): ([^\n]+)", str(exc))
    if not found:
        return None
    name, message = found[-1]
    cls = globals().get(name)
    if not (isinstance(cls, type) and issubclass(cls, VidsparkError)):
        return None
    return cls(message.strip())


_BUG_TYPES = (NameError, AttributeError, TypeError, AssertionError, ImportError)


def raised_in_vidspark(exc: BaseException) -> bool:
    """Whether an exception is a bug of vidspark's own code or resource exhaustion, not a problem of the input.

    Decoders raise anything on odd input (``TypeError`` from EXIF parsing, ``struct.error``,
    ``IndexError``...), so the type alone cannot tell; where it was raised can. A programming error
    (``NameError``, ``AttributeError``, ``TypeError``, ``AssertionError``, ``ImportError``) whose
    innermost frame is in the vidspark package is a bug; ``MemoryError`` is exhaustion wherever it
    comes from. vidspark's deliberate errors (:class:`VidsparkError`, ``DecodeError``) are input problems.
    """
    if type(exc).__module__.split(".")[0] in ("av", "PIL"):  # a decoder's own error (PyAV's MemoryError too) is about the data
        return False
    if isinstance(exc, MemoryError):
        return True
    if not isinstance(exc, _BUG_TYPES) or isinstance(exc, VidsparkError):
        return False
    import os

    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    return last is not None and os.path.dirname(os.path.abspath(last.tb_frame.f_code.co_filename)) == os.path.dirname(os.path.abspath(__file__))
