"""The sink: the output file, replaced atomically (the old file or the new one, never a mix), and
JSON Lines history files, appended a whole line at a time and read back from the end."""
import contextlib
import json
import os
import secrets
from typing import List

from etl.errors import SinkError
from etl.records import encode_records


def write_json(records: list, path: str) -> None:
    """Replace path with records as JSON, atomically: the old file or the new one, never a mix."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except FileExistsError:
        raise SinkError(f"cannot write {path}: {folder} is a file, not a folder") from None
    except OSError as exc:
        raise SinkError(f"cannot write {path}: {exc.strerror}") from None
    # Named before it exists, so that a signal landing at any moment after it is created can remove it.
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(8)}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as out:
            out.writelines(encode_records(records))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):  # not created yet, or already replaced
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise SinkError(f"cannot write {path}: {exc.strerror}") from None
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def append_line(path: str, record: dict) -> None:
    """Append record to a JSON Lines file in a single write, so a crash cannot leave half a line."""
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
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
