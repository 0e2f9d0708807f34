"""Writing files so that nothing is ever half-written, and nothing is lost that was not rewritten.

A reader, or a run cut short at any point (an exception, a full disk, Ctrl-C, a crash), sees the old
version or the new one, never a mixture:

    write_text_atomic(path, text)          one file: written beside it, fsync'ed, renamed over it
    write_folder_atomic(target, fill)      a folder: ``fill(stage)`` writes the files into a temporary
                                           folder beside ``target``; every file is fsync'ed; then the
                                           staged folder takes ``target``'s place

How the staged folder takes its place:

- ``target`` does not exist: one rename, so the folder appears whole or not at all.
- ``target`` holds nothing but names the new folder writes again (a training checkpoint, a model
  saved there before): the old folder is renamed aside to ``.<name>.previous``, the new one renamed
  in, the old one deleted. A crash between the two renames leaves the old folder aside and no
  ``target``; ``restore_previous`` puts it back (every write runs it first, and so does a reader
  that looks for a checkpoint to resume).
- ``target`` also holds files the new folder does not write (a README, another library's files):
  those must survive, so the new files are moved in one at a time with ``os.replace`` (each an
  atomic rename), the names in ``last`` at the end (config.json: the file that makes a checkpoint
  loadable comes last).

Permissions: ``mkstemp`` and ``mkdtemp`` create 0600 files and 0700 folders (and some writers, such
as safetensors', leave 0600 files), which a rename would keep; they are set to what ``open`` and
``os.makedirs`` give under the user's umask (0644 and 0755 under umask 022) before they take their
place.

Temporary names start with a dot (``.<name>.saving-XXXX``, ``.<name>.previous``); a failure removes
them before the error propagates.
"""
from __future__ import annotations

import os
import shutil
import tempfile


def current_umask() -> int:
    """The process's umask (read by setting it and setting it back: POSIX has no plain getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path, text: str) -> str:
    """Write ``text`` (UTF-8, '\\n' line ends) to ``path`` atomically; return the path."""
    return _write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def _write_atomic(path, write) -> str:
    """``write(f)`` into a temporary file beside ``path`` (opened "wb"), fsync'ed, given the mode
    open() would give under the user's umask, then renamed over ``path``; -> the path."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())         # as open() would have created it, not 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def previous_version(target: str) -> str:
    """Where ``write_folder_atomic`` keeps ``target``'s old folder while it swaps the new one in."""
    parent, name = os.path.split(os.path.abspath(target))
    return os.path.join(parent, f".{name}.previous")


def restore_previous(target) -> None:
    """Finish a folder swap that a crash cut short: put the old folder back when ``target`` is
    missing, or delete it when the new ``target`` is already in place."""
    target = os.path.abspath(os.fspath(target))
    previous = previous_version(target)
    if not os.path.isdir(previous):
        return
    if os.path.exists(target):
        shutil.rmtree(previous)
    else:
        os.rename(previous, target)


def write_folder_atomic(target, fill, last=()) -> str:
    """Write the folder ``target`` through ``fill(stage)`` (see the module docstring); -> its
    absolute path. ``last``: names moved in after the others when files are moved one by one."""
    target = os.path.abspath(os.fspath(target))
    if os.path.exists(target) and not os.path.isdir(target):
        raise FileExistsError(f"cannot write the folder {target}: it is a file")
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    restore_previous(target)
    stage = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.saving-", dir=parent)
    try:
        fill(stage)
        names = sorted(os.listdir(stage), key=lambda n: (n in last, n))
        _apply_umask(stage)                              # not mkdtemp's 0700 (nor a writer's 0600)
        _fsync_tree(stage)
        if not os.path.exists(target):
            os.rename(stage, target)                     # the folder appears whole
        elif set(os.listdir(target)) <= set(names):
            previous = previous_version(target)
            os.rename(target, previous)                  # the old folder aside ...
            os.rename(stage, target)                     # ... the new one in its place
            shutil.rmtree(previous)
        else:                                            # keep what we do not rewrite
            for name in names:
                os.replace(os.path.join(stage, name), os.path.join(target, name))
            os.rmdir(stage)
        _fsync_dir(parent)
        _fsync_dir(target)
    finally:
        if os.path.isdir(stage):
            shutil.rmtree(stage, ignore_errors=True)
    return target


def _apply_umask(folder: str) -> None:
    """Give ``folder``, its sub-folders and files the modes ``os.makedirs`` and ``open`` give under the
    user's umask (0755 and 0644 under 022): mkdtemp makes 0700, and writers that go through their own
    temporary files (safetensors) leave 0600."""
    mask = current_umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def _fsync_tree(folder: str) -> None:
    """fsync every file below ``folder``, then the folders themselves."""
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb+") as f:
                os.fsync(f.fileno())
        _fsync_dir(root)


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return                      # some platforms cannot open a folder; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_new_file(path, flag: str, overwrite: bool = False) -> str:
    """Refuse, before any work is done, an output file the user named that would replace something:
    an existing file (unless ``overwrite``), a folder, or a path whose folder does not exist.
    ``flag`` names the option in the message (e.g. "--npy"). -> the path."""
    from tinybert.errors import InvalidValue

    path = os.fspath(path)
    if os.path.isdir(path):
        raise InvalidValue(f"{flag} {path}: is a folder; give a file name")
    if os.path.lexists(path) and not overwrite:
        raise InvalidValue(f"{flag} {path}: the file exists; pass --overwrite to replace it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InvalidValue(f"{flag} {path}: the folder {folder} does not exist")
    return path


def write_npy_atomic(path, array) -> str:
    """``np.save`` to ``path`` atomically: the old file, if any, stays whole until the new one is
    complete (a full disk leaves the old file, never a 0-byte one). -> the path."""
    import numpy as np

    return _write_atomic(path, lambda f: np.save(f, array))
