"""The sink: the output file, replaced atomically (the old file or the new one, never a mix), and
JSON Lines history files, appended a whole line at a time."""
import contextlib
import errno
import glob
import hashlib
import json
import os
import secrets
import stat
from typing import BinaryIO, Callable, List, Optional, Tuple

import prefect

from etl.errors import SinkError
from etl.records import encode_records

log = prefect.utilities.logging.get_logger(__name__)


def write_json(records: list, path: str) -> Tuple[bool, str]:
    """Replace path with records as JSON, atomically: the old file or the new one, never a mix.
    Whether path was replaced, and the SHA-256 of the bytes it holds.

    A file that already holds exactly these bytes is left alone (same inode, same mtime): it is
    compared a chunk at a time as the records are formatted, never read or formatted whole.
    A symbolic link stays a link: its target is replaced. An existing file keeps its mode; a new one
    gets what open() gives under the umask.
    """
    digest = _same_bytes(records, path)
    if digest is not None:
        return False, digest
    hashed = hashlib.sha256()

    def write(out: BinaryIO) -> None:
        for chunk in encode_records(records):
            data = chunk.encode("utf-8")
            hashed.update(data)
            out.write(data)

    replace_file(path, write)
    return True, hashed.hexdigest()


def _same_bytes(records: list, path: str) -> Optional[str]:
    """The SHA-256 of path if it holds exactly the JSON text of records; None if it does not."""
    hashed = hashlib.sha256()
    try:
        existing = open_regular(path)
    except OSError:
        return None
    with existing:
        for chunk in encode_records(records):
            data = chunk.encode("utf-8")
            if existing.read(len(data)) != data:
                return None
            hashed.update(data)
        return None if existing.read(1) else hashed.hexdigest()


def file_digest(path: str) -> Optional[str]:
    """The SHA-256 of the file at path; None if it cannot be read."""
    try:
        with open_regular(path) as existing:
            return hashlib.file_digest(existing, "sha256").hexdigest()
    except OSError:
        return None


def open_regular(path: str, limit: Optional[int] = None, follow: bool = True) -> BinaryIO:
    """path opened for reading; OSError if it is not a regular file (a fifo would block the read
    forever, a device might never end), if it is larger than limit bytes, or, unless follow, if
    it is a symbolic link."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if limit is not None and info.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def write_bytes(path: str, data: bytes, follow: bool = True) -> None:
    """Replace path with data, atomically, as write_json does; unless follow, a symbolic link at
    path is replaced itself, not its target."""
    replace_file(path, lambda out: out.write(data), follow)


def replace_file(path: str, write: Callable[[BinaryIO], None], follow: bool = True) -> None:
    """Replace path with what write writes to a temporary file beside it: fsynced, then renamed
    over it, its folder synced; the old file or the new one, never a mix. A symbolic link at path
    stays a link and its target is replaced, unless follow is False: then the link itself is."""
    target = os.path.realpath(path) if follow else os.path.abspath(path)
    folder = make_folder(os.path.dirname(target), path)
    # Named before it exists, so that a signal landing at any moment after it is created can remove it.
    tmp = _temporary(target, secrets.token_hex(8))
    try:
        with open(tmp, "xb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISREG(mode := os.stat(target, follow_symlinks=False).st_mode):
                os.chmod(tmp, stat.S_IMODE(mode))
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # not created yet, already replaced, or a read-only folder
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise SinkError(f"cannot write {path}: {exc.strerror}") from None
        raise
    # The new file is in place; syncing its folder makes the rename itself survive a power loss.
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        log.warning("Wrote %s, but could not sync its folder %s (%s): the new file may not survive "
                    "a power loss", path, folder, exc.strerror)


def make_folder(folder: str, name: str) -> str:
    """Create folder, where the file name goes, and its missing parents; folder.
    SinkError ("cannot write NAME: why") if it cannot."""
    try:
        os.makedirs(folder, exist_ok=True)
    except FileExistsError:
        raise SinkError(f"cannot write {name}: {folder} is a file, not a folder") from None
    except OSError as exc:
        raise SinkError(f"cannot write {name}: {exc.strerror}") from None
    return folder


def _temporary(target: str, token: str) -> str:
    """The temporary file a write to target goes to before it replaces it; token tells writes apart.
    A long name is cut, so that the temporary one is no longer than the output's own."""
    folder, name = os.path.split(target)
    return os.path.join(folder, f".{name[:200]}.{token}.tmp")


def remove_unfinished(path: str, follow: bool = True) -> None:
    """Remove the temporary files of writes to path that were cut short: the process that stopped
    a run removes them once nothing of it (thread or child process) can write any more."""
    target = os.path.realpath(path) if follow else os.path.abspath(path)
    folder, name = os.path.split(_temporary(target, "token"))
    pattern = os.path.join(glob.escape(folder), glob.escape(name).replace(".token.", "." + "[0-9a-f]" * 16 + "."))
    for tmp in glob.glob(pattern):
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def open_lines(path: str, name: Optional[str] = None) -> int:
    """A descriptor to append to the JSON Lines file at path, created with its missing folders as
    the output is; SinkError ("cannot write NAME: why") if it cannot be, or if path is not a
    regular file (appending to a fifo would wait for a reader for ever)."""
    name = name or path
    make_folder(os.path.dirname(os.path.realpath(path)), name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        why = "not a regular file" if exc.errno == errno.ENXIO else exc.strerror  # ENXIO: a fifo without a reader
        raise SinkError(f"cannot write {name}: {why}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SinkError(f"cannot write {name}: not a regular file")
    return fd


def append_line(path: str, record: dict) -> None:
    """Append record to a JSON Lines file as one whole line: a write that fails or falls short
    (a full disk, a file-size limit) is cut back off, so the file never ends in half a line.
    SinkError if the file cannot be opened, OSError if the write fails."""
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    fd = open_lines(path)
    try:
        size = os.fstat(fd).st_size
        try:
            written = 0
            while written < len(line):
                written += os.write(fd, line[written:])  # a short write raises on the next one
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def read_tail(path: str, count: int, window: int = 1 << 20) -> List[dict]:
    """The last count records of a JSON Lines file, read from its last `window` bytes at most; lines
    that are not a JSON object are skipped, and a missing file has none."""
    try:
        with open(path, "rb") as lines:
            size = lines.seek(0, os.SEEK_END)
            lines.seek(max(0, size - window))
            tail = lines.read().splitlines()[1 if size > window else 0:]  # the first may be cut
    except FileNotFoundError:
        return []
    records = []
    for line in reversed(tail):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, or nested too deeply to parse
            continue
        if isinstance(record, dict):
            records.append(record)
            if len(records) == count:
                break
    return records[::-1]
