"""Owning a run folder: one run per folder, one process per run, nothing lost that was not asked for.

``claim_run_folder(out, resume=False, overwrite=False)`` is the context manager every training run
holds for as long as it lasts:

1. **The folder is made** (an ``--out`` that is a file, lies under a file or cannot be written is a
   ``RunFolderError`` naming the path, never a traceback).
2. **An OS file lock** (the ``filelock`` package: ``flock`` on Unix, ``LockFileEx`` on Windows) is
   taken on ``out/.tinybert.lock``. The operating system drops it when the process ends, crash or
   ``kill -9`` included, so a stale lock cannot keep anyone out. A second process that asks for the
   same folder gets ``RunFolderBusy`` naming the holder's pid (written to ``out/.tinybert.owner``).
3. **What the folder holds is checked**:

       missing or empty            a new run (hidden entries count too, except tinybert's own
                                   lock, owner and staging names)
       a run (run_config.json, metrics.jsonl, checkpoint/, best/ ...)
                                   resume=True continues it; overwrite=True replaces it;
                                   neither: refused, naming --resume and --overwrite
       other files only            refused: a run never writes among files it did not make

   The same checks run once before anything is created (a refused ``--out`` gets no lock file),
   and again under the lock.
4. **Nothing is written through a link tinybert did not make**: a symbolic link where the lock,
   the owner file or any of a run's outputs would go is refused, naming it.
5. **Nothing is deleted until everything has been checked**: ``overwrite=True`` only marks the
   previous run; its files are removed by ``replace_previous_run(out)``, which the stages and the
   ``Trainer`` call just before a run's first write, after the data, the model and its shapes
   were built and checked. A run refused before that leaves the previous one whole.

6. **A killed run's staging leftovers go**: once the lock is held (no other process can be writing
   there), ``.checkpoint.saving-XXXX`` folders and ``.<output>.XXXX.tmp`` files of the run's own
   outputs are removed (``remove_stale_staging``).

The claim is re-entrant within a process: ``pretrain()`` claims its folder, and the ``Trainer`` it
starts claims it again at no cost (the checks ran once, under the lock).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil

from tinybert.errors import MissingFile, RunFolderBusy, RunFolderError
from tinybert.io.paths import VOCAB_NAME

LOCK_NAME = ".tinybert.lock"
OWNER_NAME = ".tinybert.owner"

# a folder holding any of these holds a run
RUN_MARKERS = ("run_config.json", "metrics.jsonl", "checkpoint", "best")
# what a run writes (removed by overwrite=True; nothing else is ever deleted)
RUN_OUTPUTS = RUN_MARKERS + (VOCAB_NAME, "test_metrics.json", "loss.png", "attention.png",
                             "train_vs_val.png", "confusion_matrix.png")

_held: dict[str, list] = {}          # realpath -> [FileLock, depth]: the folders this process owns
_to_replace: dict[str, str] = {}     # realpath -> --out as given: runs marked by overwrite=True


def _describe_oserror(e: OSError) -> str:
    return e.strerror or str(e)


def make_folder(out: str, what: str = "--out") -> str:
    """Create the folder ``out`` (and its parents); -> its absolute path. Clear errors for a path that
    is a file, lies under a file, or cannot be created."""
    path = os.path.abspath(os.fspath(out))
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunFolderError(f"{what} {out}: is a file, expected a folder (or a path where one can be made)")
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise RunFolderError(f"{what} {out}: {parent} is a file, so no folder can be made under it")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise RunFolderError(f"{what} {out}: cannot create the folder ({_describe_oserror(e)})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise RunFolderError(f"{what} {out}: the folder is not writable (read-only?); choose another --out")
    return path


def holder_pid(folder: str):
    """The pid recorded by the process that holds ``folder``'s lock, or None when unknown."""
    try:
        with open(os.path.join(folder, OWNER_NAME), encoding="utf-8") as f:
            return int(json.load(f)["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def lock_folder(out: str, what: str = "--out"):
    """Hold an OS file lock on ``out`` (made if missing) for the ``with`` block; -> absolute path.

    Raises RunFolderBusy (naming the holder's pid) when another process holds it. Re-entrant in
    one process.
    """
    from filelock import FileLock, Timeout

    created = not os.path.exists(os.path.abspath(os.fspath(out)))
    path = make_folder(out, what)
    key = os.path.realpath(path)
    if key in _held:
        _held[key][1] += 1
        try:
            yield path
        finally:
            _held[key][1] -= 1
        return
    refuse_links(path, out, (LOCK_NAME, OWNER_NAME), what)
    lock_made = not os.path.lexists(os.path.join(path, LOCK_NAME))
    lock = FileLock(os.path.join(path, LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        pid = holder_pid(path)
        raise RunFolderBusy(f"{what} {out} is in use by another tinybert process"
                            + (f" (pid {pid})" if pid else "")
                            + ": wait for it to finish, stop it, or choose another --out") from None
    except OSError as e:
        raise RunFolderError(f"{what} {out}: cannot lock the folder ({_describe_oserror(e)}); "
                             "is it writable?") from None
    owner = os.path.join(path, OWNER_NAME)
    wrote_owner = refused = False
    try:
        try:     # O_NOFOLLOW: a link planted after the check above is not followed either
            fd = os.open(owner, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except OSError:
            if os.path.islink(owner):
                raise RunFolderError(f"{what} {out}: {OWNER_NAME} is a symbolic link; tinybert never writes "
                                     "through a link it did not make: remove it") from None
            raise
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            wrote_owner = True
            json.dump({"pid": os.getpid()}, f)
        _held[key] = [lock, 1]
        yield path
    except BaseException:
        refused = True
        raise
    finally:
        _held.pop(key, None)
        _to_replace.pop(key, None)
        if wrote_owner:
            with contextlib.suppress(OSError):
                os.remove(owner)
        _tidy_lock(path, lock, created, remove=lock_made and refused)


def _tidy_lock(path: str, lock, created: bool, remove: bool) -> None:
    """Release the lock. A run that ended in an error (``remove``: it also made the lock file), or a
    folder left holding nothing but the lock, loses the lock file too, and the folder goes if this
    process made it and it is empty: a refused run leaves no trace."""
    lock_file = os.path.join(path, LOCK_NAME)
    with contextlib.suppress(OSError):
        if remove or os.listdir(path) == [LOCK_NAME]:
            os.remove(lock_file)
    lock.release()
    if created:
        with contextlib.suppress(OSError):
            os.rmdir(path)                  # only when empty


def holds_run(folder: str) -> bool:
    return any(os.path.exists(os.path.join(folder, name)) for name in RUN_MARKERS)


def is_own_hidden(name: str) -> bool:
    """tinybert's own hidden names in a run folder: the lock, the owner file, staging leftovers."""
    return name in (LOCK_NAME, OWNER_NAME) or (name.startswith(".") and (
        ".saving-" in name or name.endswith((".tmp", ".previous"))))


def visible_entries(folder: str) -> list[str]:
    """The folder's entries but tinybert's own hidden ones (a user's hidden file counts)."""
    return sorted(n for n in os.listdir(folder) if not is_own_hidden(n))


def refuse_links(folder: str, out, names, what: str = "--out") -> None:
    """RunFolderError when one of ``names`` in ``folder`` is a symbolic link: tinybert writes and
    deletes only files it made, never through a link someone planted there."""
    for name in names:
        if os.path.islink(os.path.join(folder, name)):
            raise RunFolderError(f"{what} {out}: {name} is a symbolic link; tinybert never writes or deletes "
                                 "through a link it did not make: remove it, or choose another --out")


def remove_run_outputs(folder: str) -> None:
    """Delete what a run writes (``RUN_OUTPUTS``) and its hidden staging leftovers; nothing else."""
    for name in os.listdir(folder):
        if name in RUN_OUTPUTS or (is_own_hidden(name) and name not in (LOCK_NAME, OWNER_NAME)):
            p = os.path.join(folder, name)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.remove(p)


def is_stale_staging(name: str) -> bool:
    """A staging leftover of one of a run's own outputs (``.checkpoint.saving-XXXX``, a
    ``.metrics.jsonl.XXXX.tmp``): what a write cut short by a kill leaves. (``.<name>.previous`` is
    not one: it may be the only whole copy, and ``restore_previous`` decides its fate.)"""
    return name.startswith(".") and any(
        name.startswith(f".{output}.") and (".saving-" in name or name.endswith(".tmp"))
        for output in RUN_OUTPUTS)


def remove_stale_staging(folder: str) -> list[str]:
    """Delete the staging leftovers (``is_stale_staging``) in ``folder``; only called with the
    folder's lock held, when no write of another process can be under way. -> the names removed."""
    removed = []
    for name in sorted(os.listdir(folder)):
        p = os.path.join(folder, name)
        if not is_stale_staging(name):
            continue
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.remove(p)                       # (a link is removed itself, never followed)
        removed.append(name)
    return removed


def check_run_folder(folder: str, out: str, resume: bool, overwrite: bool) -> bool:
    """Refuse a folder a new run must not write into (see the module docstring). -> True when it
    holds a run that ``overwrite`` is to replace (nothing is deleted here)."""
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite contradict each other: continue the run, or replace it")
    refuse_links(folder, out, RUN_OUTPUTS)
    if holds_run(folder):
        if resume:
            return False
        if overwrite:
            return True
        raise RunFolderError(f"{out} already holds a run (run_config.json, metrics.jsonl or checkpoint/): "
                             "pass --resume to continue it, or --overwrite to replace it")
    if resume:
        return False             # the caller says "nothing to resume" with the details
    others = visible_entries(folder)
    if others:
        shown = ", ".join(others[:5]) + (f" ... ({len(others) - 5} more)" if len(others) > 5 else "")
        raise RunFolderError(f"{out} is not empty and holds no tinybert run ({shown}); a run writes only "
                             "into a new or empty folder: choose another --out")
    return False


def replace_previous_run(folder) -> None:
    """Delete the run that ``overwrite=True`` marked in ``folder`` (its own files only; see
    ``remove_run_outputs``), saying so. Called just before a run's first write, when everything
    that could refuse the run has been checked; a no-op for a folder with nothing marked."""
    key = os.path.realpath(os.path.abspath(os.fspath(folder)))
    out = _to_replace.pop(key, None)
    if out is None:
        return
    refuse_links(key, out, RUN_OUTPUTS)
    print(f"replacing the previous run in {out} (overwrite)")
    remove_run_outputs(key)


@contextlib.contextmanager
def claim_run_folder(out, resume: bool = False, overwrite: bool = False):
    """Lock ``out`` and check it may hold this run (module docstring); -> the absolute path.

    The checks run once, when the folder is first claimed in this process.
    """
    key = os.path.realpath(os.path.abspath(os.fspath(out)))
    first = key not in _held
    if resume and not os.path.isdir(out):
        raise MissingFile(f"nothing to resume: {os.fspath(out)} does not exist")
    if first and os.path.isdir(out):      # refuse before making anything (no lock file left behind)
        check_run_folder(os.path.abspath(os.fspath(out)), os.fspath(out), resume, overwrite)
    with lock_folder(out) as path:
        if first and check_run_folder(path, os.fspath(out), resume, overwrite):
            _to_replace[key] = os.fspath(out)
        if first:                          # the lock is ours: a staging folder here is a killed run's
            remove_stale_staging(path)
        yield path


def check_not_inside(source, out, what: str = "--model") -> None:
    """Refuse an ``out`` folder that holds the checkpoint ``source`` a run reads (or lies inside it):
    writing the run there would replace or mix with what it is reading."""
    src = os.path.realpath(os.fspath(source))
    dst = os.path.realpath(os.fspath(out))
    if os.path.commonpath([src, dst]) in (src, dst):
        raise RunFolderError(f"--out {out} and {what} {source} overlap: the run would write into the "
                             f"folder of the checkpoint it reads; choose an --out outside {source} "
                             "(and not one that contains it)")
