"""One process per output: an exclusive flock on a lock file beside it, held while the process uses
the output and freed by the kernel when the process ends, even by kill -9.

The lock file holds the pid of its holder, so that the next process can say who is in the way. The
holder removes it when it is done; kill -9 leaves it behind, unlocked, for the next one to take.
"""
import contextlib
import fcntl
import os
import time
from typing import Dict, Iterator

from etl.errors import Explained

EX_TEMPFAIL = 75  # sysexits.h: try again later
_held: Dict[str, int] = {}  # lock file -> how many holds of this process are inside it


class Busy(Explained):
    """Another process holds the lock."""


class LockError(Explained):
    """The lock file cannot be created or locked."""


def lock_path(output: str) -> str:
    """The lock file of the output file: hidden beside it (beside its target, for a symbolic link)."""
    target = os.path.realpath(output)
    folder, name = os.path.split(target)
    return os.path.join(folder, f".{name[:200]}.lock")  # a long name is cut, as the temporary file's is


@contextlib.contextmanager
def held(path: str, what: str) -> Iterator[None]:
    """Hold the lock file at path while inside; what names what it guards in the messages.

    Busy if another process holds it, naming its pid; LockError if path cannot be created or
    locked. A process that holds it already goes in at once (a hold inside a hold).
    """
    path = os.path.abspath(path)
    if path in _held:
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    fd = _take(path, what)
    _held[path] = 1
    try:
        yield
    finally:
        del _held[path]
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still locked: whoever opened it meanwhile sees it is gone
        os.close(fd)  # closing the last descriptor of the open file frees the lock


def _take(path: str, what: str) -> int:
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
    except FileExistsError:
        raise LockError(f"cannot lock {what}: {folder} is a file, not a folder") from None
    except OSError as exc:
        raise LockError(f"cannot lock {what}: cannot create {folder}: {exc.strerror}") from None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise LockError(f"cannot lock {what}: cannot create {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise Busy(f"{what} is in use by another process ({holder}, lock file {path}): stop it, or "
                       "give this one another --output") from None
        except OSError as exc:
            os.close(fd)
            raise LockError(f"cannot lock {what}: {path}: {exc.strerror}") from None
        if _same_file(fd, path):
            break
        os.close(fd)  # its last holder removed it after we opened it: lock the one at path now
    with contextlib.suppress(OSError):  # a full disk: the lock holds all the same
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _same_file(fd: int, path: str) -> bool:
    try:
        at_path = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (opened.st_dev, opened.st_ino) == (at_path.st_dev, at_path.st_ino)


def _holder(fd: int, wait: float = 1.0) -> str:
    """Who holds the lock, from the pid it wrote; the holder may have locked it and not written yet."""
    end = time.monotonic() + wait
    while True:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return f"pid {text}"
        if time.monotonic() >= end:
            return "pid unknown"
        time.sleep(0.01)
