"""The errors tinybert raises on purpose, all in one place.

Every check in the library that finds a bad argument, a bad file or a run that cannot go on raises
one of these, with a message that names the thing, its value and what was expected. Each is also a
built-in exception (``ValueError``, ``TypeError``, ``FileNotFoundError``, ``RuntimeError``), so code
that catches those keeps working.

The command line catches exactly these (and ``OSError`` for files it cannot read or write) and
prints one line; anything else is a bug in tinybert and shows its traceback.

    TinyBertError                        the base: "tinybert refused this, on purpose"
    ├── InvalidValue (ValueError)        an argument, a config field or a file's content is wrong
    │   ├── CheckpointError              a checkpoint folder is broken, inconsistent or hostile
    │   │   └── IncompleteCheckpoint     a training checkpoint lacks a piece needed to resume
    │   ├── ResumeMismatch               resume was asked with other settings, model or data
    │   ├── RunFolderError               the run folder cannot be used as asked
    │   │   └── RunFolderBusy            another process holds the run folder
    │   └── TrainingDiverged             the loss or the gradients became NaN or infinite
    ├── InvalidType (TypeError)          an argument of the wrong type
    ├── MissingFile (FileNotFoundError)  a file or folder the caller named does not exist
    ├── BackendUnavailable (ImportError) an attention kernel that cannot run here (Numba, CUDA)
    ├── DeviceUnavailable (RuntimeError) the GPU (CuPy, an NVIDIA device) is not there
    └── DistributedError (RuntimeError)  the ranks of an mpiexec run cannot work together
        └── RanksDisagree                they were started with other settings or data
"""
from __future__ import annotations


class TinyBertError(Exception):
    """Base of every error tinybert raises on purpose (never of a bug)."""


class InvalidValue(TinyBertError, ValueError):
    """An argument, a config field or the content of a file is not what was expected."""


class InvalidType(TinyBertError, TypeError):
    """An argument has the wrong type."""


class MissingFile(TinyBertError, FileNotFoundError):
    """A file or folder that was named does not exist."""


class BackendUnavailable(TinyBertError, ImportError):
    """The attention backend asked for cannot import on this machine (the message says what to install)."""


class DeviceUnavailable(TinyBertError, RuntimeError):
    """``model.to("cuda")`` (or ``--device cuda``) on a machine without CuPy or an NVIDIA GPU."""


class CheckpointError(InvalidValue):
    """A checkpoint folder is broken, inconsistent (config.json against its tensors) or hostile."""


class IncompleteCheckpoint(CheckpointError):
    """A checkpoint to resume from lacks a piece (a file, or a key of its training state)."""


class ResumeMismatch(InvalidValue):
    """``resume=True`` was asked with settings, model arguments or data that differ from the run's."""


class RunFolderError(InvalidValue):
    """The run folder cannot be used as asked (a file, not writable, holds another run ...)."""


class RunFolderBusy(RunFolderError):
    """Another process holds the run folder's lock."""


class TrainingDiverged(InvalidValue):
    """The loss or the gradients became NaN or infinite; the message names the step, the layer where
    the first non-finite value appeared, and what to do."""


class DistributedError(TinyBertError, RuntimeError):
    """The ranks of a data-parallel run cannot work together (mpiexec without mpi4py, a lost rank)."""


class RanksDisagree(DistributedError):
    """The ranks of a data-parallel run were started with different settings or data (raised on
    every rank at once)."""
