"""The sink: the output file, replaced atomically (the old file or the new one, never a mix), and
JSON Lines history files, appended a whole line at a time and read back from the end."""
import contextlib
import json
import os
import secrets
import stat
from typing import List, Set

import prefect

from etl.errors import SinkError
from etl.records import encode_records

log = prefect.utilities.logging.get_logger(__name__)


# Temporary files being written now, by any thread: what a signal that ends the process removes.
_writing: Set[str] = set()


def remove_unfinished() -> None:
    """Remove the temporary files of writes still in progress: the process is about to end."""
    for tmp in list(_writing):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_json(records: list, path: str) -> None:
    """Replace path with records as JSON, atomically: the old file or the new one, never a mix.

    A symbolic link stays a link: its target is replaced. An existing file keeps its mode; a new one
    gets what open() gives under the umask.
    """
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    try:
        os.makedirs(folder, exist_ok=True)
    except FileExistsError:
        raise SinkError(f"cannot write {path}: {folder} is a file, not a folder") from None
    except OSError as exc:
        raise SinkError(f"cannot write {path}: {exc.strerror}") from None
    # Named before it exists, so that a signal landing at any moment after it is created can remove it.
    # (a long name is cut, so that the temporary one is no longer than the output's own)
    tmp = os.path.join(folder, f".{os.path.basename(target)[:200]}.{secrets.token_hex(8)}.tmp")
    _writing.add(tmp)
    try:
        with open(tmp, "x", encoding="utf-8") as out:
            out.writelines(encode_records(records))
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # not created yet, already replaced, or a read-only folder
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise SinkError(f"cannot write {path}: {exc.strerror}") from None
        raise
    finally:
        _writing.discard(tmp)
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


def append_line(path: str, record: dict) -> None:
    """Append record to a JSON Lines file as one whole line: a write that fails or falls short
    (a full disk, a file-size limit) is cut back off, so the file never ends in half a line."""
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
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
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
            if len(records) == count:
                break
    return records[::-1]
