"""The errors `compress` raises for bad input. The CLI prints any `CompressError` as one paragraph, exit code 2."""
from typing import Any


def described(error: BaseException) -> str:
    """'TypeName: the first line of its message', cut short: a library's error quoted inside one of ours."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:300]}" if lines else type(error).__name__


def shown(value: Any, limit: int = 60) -> str:
    """`repr(value)` cut to about `limit` characters: a message never echoes a whole oversized input."""
    if isinstance(value, int) and value.bit_length() > 200:  # repr of a 5,000-digit integer is refused by Python
        return f"an integer of {value.bit_length():,} bits"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"



class CompressError(Exception):
    """Base class: a problem the user can fix; its message says what and how."""


class ConfigError(CompressError):
    """The pipeline file is malformed, has an unknown key, or a value of the wrong type or range."""


class UnknownNameError(CompressError, KeyError):
    """A registry lookup missed: unknown stage type, model architecture, exporter or target."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DataError(CompressError):
    """A dataset cannot be found or its files are malformed."""


class ModelError(CompressError):
    """A model cannot be built: bad architecture reference, bad arguments, missing optional package."""


class WeightsError(ModelError):
    """A weights or checkpoint file is missing, corrupt, pickled, or does not match the model."""


class TargetError(CompressError):
    """A target profile is unknown or invalid."""


class TrainingError(CompressError):
    """Training cannot go on, e.g. the loss became NaN or infinite."""


class RunDirError(CompressError):
    """The run directory cannot be written, or its contents are corrupt."""


class ExportError(CompressError):
    """A model cannot be exported or the exported artifact fails to load."""
