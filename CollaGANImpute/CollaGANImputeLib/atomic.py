"""Atomic writing: every file (or folder) is written to a hidden temporary sibling and renamed into place, so a
reader never sees half of it and an error or Ctrl-C leaves nothing behind.

The one home of the pattern: :func:`atomic_path` for one file or folder, :func:`write_text_atomic` for text,
:class:`OutputSet` for several files together (all or nothing). Temporaries carry this machine and process in
their names, so a rerun removes what a killed process left (:func:`remove_stale_temporaries`).

Example:
    >>> with atomic_path("out/table.csv") as tmp:            # doctest: +SKIP
    ...     tmp.write_text("metric,value\\n")
    >>> write_text_atomic("out/summary.json", "{}")          # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]

#: Extensions of two parts, kept whole at the end of a temporary's name (writers pick the format by it).
_COMPOUND_SUFFIXES = (".nii.gz", ".tar.gz")
#: This machine, in temporary file names (with the process id): a rerun removes what a killed process left.
_OWNER = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def split_suffix(name: str) -> tuple[str, str]:
    """(stem, extension) of a file name, keeping a two-part extension whole.

    Example:
        >>> split_suffix("P1-t1c-synthetic-collagan.nii.gz")
        ('P1-t1c-synthetic-collagan', '.nii.gz')
        >>> split_suffix("table.csv")
        ('table', '.csv')
    """
    for suffix in _COMPOUND_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    path = Path(name)
    return (path.stem, path.suffix) if path.suffix else (name, "")


def file_mode() -> int:
    """The permissions a new file gets under the process's umask (``0o666 & ~umask``, e.g. 0644).

    Why: temporary files (``tempfile.mkstemp``) are created 0600; renamed into place they would stay private
    to their owner, so colleagues on a shared cluster could not read the outputs.
    """
    mask = os.umask(0o022)  # the only portable way to read the umask is to set it (and set it back at once)
    os.umask(mask)
    return 0o666 & ~mask


def follow_umask(path: PathLike) -> None:
    """Give a finished temporary file (or folder) the permissions a plainly created one would have."""
    mode = file_mode()
    if os.path.isdir(path):
        mode |= (mode & 0o444) >> 2  # folders: searchable wherever readable (0644 -> 0755)
    try:
        os.chmod(path, mode)
    except (OSError, NotImplementedError):  # pragma: no cover - e.g. file systems without POSIX modes
        pass


def _alive(pid: int) -> bool:
    if os.name == "nt":  # Windows' os.kill terminates the process: never probe, keep every temporary there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: alive
        return True
    return True


def remove_stale_temporaries(path: PathLike) -> list[Path]:
    """Remove the hidden temporary files of ``path`` that a process of this machine left when it was killed
    (SIGKILL, power loss) before it could clean up; those of running processes are kept. Returns the removed.

    Example:
        >>> remove_stale_temporaries("out/P1-t1c-synthetic-collagan.nii.gz")   # doctest: +SKIP
        [PosixPath('out/.P1-t1c-synthetic-collagan.3f2a1c-4242.k2j4l1x9.tmp.nii.gz')]
    """
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(split_suffix(path.name)[0])}\.{_OWNER}-(\d+)\.[^.]+\.tmp")
    removed = []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed
    for name in names:
        match = pattern.match(name)
        if match and not _alive(int(match.group(1))):
            stale = path.parent / name
            try:
                shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else os.unlink(stale)
                removed.append(stale)
            except OSError:
                pass
    return removed


def temporary_sibling(path: PathLike, suffix: str = "", directory: bool = False) -> Path:
    """Create an empty hidden temporary file (or folder) beside ``path`` and return its path; ``suffix`` (by
    default ``path``'s extension) ends its name, for writers that choose the format by it.

    Example:
        >>> temporary_sibling("out/a.nii.gz").name                  # doctest: +SKIP
        '.a.3f2a1c-4242.k2j4l1x9.tmp.nii.gz'
    """
    path = Path(path)
    stem, extension = split_suffix(path.name)
    remove_stale_temporaries(path)
    options = {"prefix": f".{stem}.{_OWNER}-{os.getpid()}.", "suffix": f".tmp{suffix or extension}",
               "dir": path.parent}
    if directory:
        return Path(tempfile.mkdtemp(**options))
    fd, tmp = tempfile.mkstemp(**options)
    os.close(fd)
    return Path(tmp)


def _remove(tmp: Path) -> None:
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    elif os.path.lexists(tmp):
        os.unlink(tmp)


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "", directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; when the block ends normally it is renamed onto ``path``
    (with the permissions the umask gives), else removed. ``directory``: a folder, filled by the block.

    Example:
        >>> with atomic_path("runs/g.pt") as tmp:                   # doctest: +SKIP
        ...     torch.save(state, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path, suffix, directory)
    try:
        yield tmp
        follow_umask(tmp)
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def write_text_atomic(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (never half a file); returns ``path``.

    Example:
        >>> write_text_atomic("out/report.md", "# Report\\n")    # doctest: +SKIP
        PosixPath('out/report.md')
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return path


@contextlib.contextmanager
def locked_folders(folders: Iterable[PathLike]) -> Iterator[None]:
    """Hold an exclusive lock on each folder while the block runs (other processes committing there wait).

    Why the folder itself (``flock`` on its descriptor) and not a lock file: nothing is left behind, even after
    SIGKILL, and the lock goes with the process. Folders are locked in sorted order (no deadlock between two sets
    sharing folders). Where locks are not available (Windows, some network file systems) the block runs unlocked.

    Example:
        >>> with locked_folders(["out"]):                      # doctest: +SKIP
        ...     os.replace("out/.a.tmp", "out/a.nii.gz")
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    descriptors = []
    try:
        for folder in sorted({str(Path(f).resolve()) for f in folders}):
            try:
                descriptor = os.open(folder, os.O_RDONLY)
            except OSError:
                continue
            descriptors.append(descriptor)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX)
            except OSError:  # pragma: no cover - a file system without flock
                pass
        yield
    finally:
        for descriptor in reversed(descriptors):
            os.close(descriptor)  # closing releases the lock


class OutputSet:
    """All-or-nothing writing of several files (a case's volumes, sidecars and montages).

    :meth:`stage` writes each file to a hidden temporary file beside its destination (:func:`temporary_sibling`);
    :meth:`commit` renames them all into place, and if one rename fails (or Ctrl-C/SIGTERM comes) restores every
    file it had replaced and removes every one it had added. Leaving the ``with`` block by an exception before the
    commit removes the temporaries: nothing is left on disk. Files get the permissions the umask gives
    (:func:`file_mode`).

    Example:
        >>> with OutputSet() as outputs:                                                   # doctest: +SKIP
        ...     write_volume(image, "out/a-t1c-synthetic-collagan.nii.gz", outputs=outputs)
        ...     outputs.stage("out/a-t1c-synthetic-collagan.json", lambda tmp: Path(tmp).write_text("{}"))
        ...     written = outputs.commit()
    """

    def __init__(self) -> None:
        self._staged: list[tuple[str, Path]] = []

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, *exc_info) -> None:
        self.discard()

    def stage(self, path: PathLike, write: Callable[[str], object], suffix: str = "") -> Path:
        """Run ``write(temporary_path)`` for the destination ``path`` (its folder must exist)."""
        path = Path(path)
        tmp = str(temporary_sibling(path, suffix))
        self._staged.append((tmp, path))
        write(tmp)
        follow_umask(tmp)
        return path

    def discard(self) -> None:
        """Remove every staged temporary file (nothing was committed, or the commit is done)."""
        for tmp, _ in self._staged:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._staged = []

    def commit(self, check: Optional[Callable[[], object]] = None) -> list[Path]:
        """Rename every staged file into place, all or none; returns the destinations.

        The output folders are locked while committing (:func:`locked_folders`): concurrent commits of one set
        follow each other, so the set is always one commit's files, never a mix. ``check`` runs under the lock
        first (e.g. that the files to be replaced may be); an exception from it commits nothing.
        """
        with locked_folders(path.parent for _, path in self._staged):
            if check is not None:
                try:
                    check()
                except BaseException:
                    self.discard()
                    raise
            return self._commit()

    def _commit(self) -> list[Path]:
        done: list[tuple[Path, Optional[str]]] = []
        try:
            for tmp, path in self._staged:
                backup = None
                if os.path.lexists(path):
                    if path.is_dir():
                        raise IsADirectoryError(errno.EISDIR, "a folder is in the way", str(path))
                    backup = f"{tmp}.previous"
                    os.replace(path, backup)
                done.append((path, backup))
                os.replace(tmp, path)
        except BaseException:
            for path, backup in reversed(done):  # undo: the previous files back, the new ones away
                if backup is not None and os.path.exists(backup):
                    os.replace(backup, path)
                elif backup is None and os.path.exists(path):
                    os.unlink(path)
            self.discard()
            raise
        for _, backup in done:
            if backup is not None and os.path.exists(backup):
                os.unlink(backup)
        written = [path for _, path in self._staged]
        self._staged = []
        return written
