"""User-facing errors: one base class, `SeglabError`, whose message says what is wrong, where, and what to do.

Every `seglab` command prints a SeglabError as one line (``seglab CMD: error: MESSAGE``) and exits with
status 1. Any other exception is a bug in seglab (or in a plugin) and keeps its full traceback, which is why
library code raises these classes only for faults of the user's input: a flag or key, a path, a file, a
dataset sample, a checkpoint. The subclasses let callers catch one kind; the messages carry the details.
"""

from __future__ import annotations

from pathlib import Path


class SeglabError(Exception):
    """A fault in what the user gave seglab (flag, file, dataset, run); the message is one line."""


class ConfigError(SeglabError):
    """A bad flag, config key or value; the message names the flag or the file and key."""


class PathError(SeglabError):
    """A path that does not exist, is of the wrong kind (file vs folder), or is not a run folder."""


class PluginError(SeglabError):
    """A plugin module that cannot be imported, or a name no registry (nor plugin) provides."""


class CheckpointError(SeglabError):
    """A checkpoint that cannot be used: unreadable, incomplete, or not matching the run."""


class UnloadableCheckpoint(CheckpointError):
    """A checkpoint file that does not load (torn, damaged, not a checkpoint, or refused by `weights_only`); a
    resume sets it aside and falls back to the previous one. I/O errors and missing memory are not this."""


class DatasetError(SeglabError):
    """A dataset that cannot be built (root or list missing, unsafe list entries); says what to do."""


class BadSampleError(SeglabError):
    """A sample file that cannot be used: `path` names it, `kind` is a stable key for reports."""

    def __init__(
        self, path: Path | str | None, reason: str, *, kind: str = "bad_sample", details: dict | None = None
    ) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
        self.kind = kind
        self.details = details or {}

    def __reduce__(self):  # DataLoader workers send errors back pickled; keep the keyword arguments
        return _bad_sample, (self.path, self.reason, self.kind, self.details)


def _bad_sample(path: str, reason: str, kind: str, details: dict) -> BadSampleError:
    return BadSampleError(path, reason, kind=kind, details=details)


class TrainingError(SeglabError):
    """A run that cannot start or go on (refused resume, non-finite loss, all samples skipped); says why."""


class ExportError(SeglabError):
    """An export that failed its checks (ONNX checker or the comparison with PyTorch)."""
