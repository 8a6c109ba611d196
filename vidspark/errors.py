"""Exception classes raised by vidspark, one module so callers can catch them precisely.

Each class carries the process exit code the CLI and the jobs use for it, so that a scheduler
(cron, Airflow) can tell a bad argument from an unreachable bucket from a dirty input.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_STORAGE = 3
EXIT_ERROR_FRACTION = 4


class VidsparkError(Exception):
    """Base class of every error vidspark raises on purpose."""

    exit_code = 1


class ConfigError(VidsparkError, ValueError):
    """A conf key, a command-line argument or a layout template is not valid."""

    exit_code = EXIT_USAGE


class LayoutError(ConfigError):
    """A layout template cannot be compiled."""


class EnvironmentProblem(VidsparkError):
    """The machine lacks something vidspark needs (Java, a library)."""

    exit_code = EXIT_USAGE


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
