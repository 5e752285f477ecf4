"""Durable atomic writes, cross-process locks, and CSV cells no spreadsheet executes.

- `atomic_write*`: write a temporary file beside the target, fsync it, rename it onto the target
  and fsync the folder: a crash or a power loss leaves the old file or the new one, never half.
  Temporary files are named `.<name>.<random>.tmp`; `sweep_temp_files` removes stale ones.
- `locked(path)`: an exclusive `filelock` lock on `path` (a lock file), waited for with a log
  line; on Linux, macOS and Windows.
- CSV: a text cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return is written
  with a leading `'` (OWASP's advice against formula injection); `unescape_cell` undoes it.
  Numbers are written as numbers, so a negative overfitting gap stays a number.
- Names: a name that becomes a file or folder name (a head label, a run name) is one path
  component from `NAME_CHARACTERS` (`check_name`): a run folder someone sends you cannot make
  headbench write outside it.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import filelock

from . import progress
from .errors import HeadbenchError

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
TEMP_SUFFIX = ".tmp"
STALE_SECONDS = 24 * 3600  # a temp file older than this belongs to no live writer
# every label headbench makes (gap[1024,512], gap-d0.5, gap+aug4+ft,
# avgpool-pool_size3-strides1) and run name: no separator, and never '.' or '..'
NAME_CHARACTERS = "letters, digits and _ . , + = - [ ], starting with a letter or digit"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.,+=\[\]-]*")


def check_name(name: Any, what: str, param: str | None = None) -> str:
    """`name` if it is one path component of `NAME_CHARACTERS` (at most 200 of them), else
    one line naming `what` it is.

    Example:
        >>> check_name("gap[1024,512]", "head label")
        'gap[1024,512]'
        >>> check_name("../x", "head label")
        Traceback (most recent call last):
        ...
        headbench.errors.HeadbenchError: head label '../x' is not a name: use letters, digits and _ . , + = - [ ], starting with a letter or digit (no path separators)
    """
    if not isinstance(name, str) or len(name) > 200 or not _NAME.fullmatch(name):
        raise HeadbenchError(f"{what} {str(name)[:80]!r} is not a name: use {NAME_CHARACTERS} "
                             "(no path separators)", param=param)
    return name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def fsync_dir(path: str | Path) -> None:
    """Make a rename or a new file in folder `path` durable (a no-op where folders cannot be
    opened, as on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)`, fsync, then move the temporary file onto `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from e
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results are for sharing
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):  # name the file meant, not the temp, and always a cause
            code = e.errno if e.errno is not None else _short_write_errno(path.parent)
            raise OSError(code, e.strerror or os.strerror(code), str(path)) from e
        raise
    fsync_dir(path.parent)
    return path


def _short_write_errno(folder: Path) -> int:
    """The errno of a write that failed without one (numpy's "N requested and M written"):
    ENOSPC when the folder's disk has less than 1 MiB free, else EIO."""
    try:
        full = shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        full = False
    return errno.ENOSPC if full else errno.EIO


def atomic_write_safetensors(path: str | Path, tensors: Mapping[str, Any],
                             metadata: Mapping[str, str] | None = None) -> Path:
    """`tensors` as a safetensors file, atomically; serialised in memory first, so that a full
    disk is an OSError naming `path` (safetensors' own writer raises its own error type)."""
    from safetensors.torch import save
    return atomic_write_bytes(path, save(dict(tensors), metadata=dict(metadata or {})))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def atomic_write_csv(path: str | Path, rows: Iterable[Mapping[str, Any]],
                     fieldnames: list[str] | None = None) -> Path:
    """Rows as CSV; text cells that could start a formula are neutralised (`escape_cell`)."""
    rows = list(rows)
    if fieldnames is None:
        fieldnames = list(dict.fromkeys(k for row in rows for k in row))

    def write(tmp: str) -> None:
        # surrogateescape: a file name that is not UTF-8 is written back byte for byte
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            writer = csv.DictWriter(f, fieldnames=fieldnames, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({k: escape_cell(v) for k, v in row.items()} for row in rows)
    return atomic_write(path, write)


def escape_cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula gets a leading `'`; numbers stay.

    >>> escape_cell("=1+2"), escape_cell("-0.25"), escape_cell(-0.25), escape_cell("ants")
    ("'=1+2", "'-0.25", -0.25, 'ants')
    """
    if isinstance(value, str) and value.startswith(FORMULA_START + ("'",)):
        return "'" + value  # a leading quote is escaped too, so unescaping is exact
    return value


def unescape_cell(value: str) -> str:
    """The text `escape_cell` was given.

    >>> unescape_cell("'=1+2"), unescape_cell("''quoted"), unescape_cell("ants")
    ('=1+2', "'quoted", 'ants')
    """
    return value[1:] if value.startswith("'") else value


def read_json(folder: str | Path, name: str, kind: str, fix: str) -> Any:
    """`folder/name` parsed; one-line errors when the folder is missing, is not a `kind` folder
    (no such file) or the file cannot be read, each ending with `fix`."""
    folder = Path(folder)
    path = folder / name
    if not folder.is_dir():
        raise HeadbenchError(f"{kind} folder '{folder}' does not exist; {fix}")
    if not path.is_file():
        raise HeadbenchError(f"'{folder}' is not a headbench {kind} folder (no {name}); {fix}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise HeadbenchError(f"'{path}' cannot be read ({e}); {fix}") from None


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV written by `atomic_write_csv`, cells unescaped; [] when it is absent."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return [{k: unescape_cell(v or "") for k, v in row.items()} for row in csv.DictReader(f)]


class Busy(Exception):
    """The lock is held by another process (only raised with `wait=False`)."""


# errors of a filesystem that has no locks (EOPNOTSUPP is ENOTSUP on Linux)
_NO_LOCKS = {getattr(errno, n) for n in ("ENOSYS", "ENOLCK", "EOPNOTSUPP", "ENOTSUP")
             if hasattr(errno, n)}


@contextlib.contextmanager
def locked(lock_file: str | Path, waiting: str = "", wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` (created if needed) for the block.

    Other processes block until it is free (`waiting` is logged once if they have to wait);
    with `wait=False` a held lock raises `Busy` instead. A `filelock.FileLock`: flock on Linux
    and macOS, a Windows lock on Windows; where the filesystem cannot lock at all (some network
    mounts) the block runs unlocked.
    """
    Path(lock_file).parent.mkdir(parents=True, exist_ok=True)
    lock, held = filelock.FileLock(str(lock_file)), True
    try:
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:  # before OSError: Timeout is a TimeoutError
            if not wait:
                raise Busy(str(lock_file)) from None
            if waiting:
                progress.log(waiting)
            lock.acquire()
    except (NotImplementedError, OSError) as e:
        # a filesystem without locks (filelock 3 raises NotImplementedError there; NFS without
        # its lock daemon ENOLCK): run unlocked rather than not at all
        if not isinstance(e, NotImplementedError) and e.errno not in _NO_LOCKS:
            raise
        held = False
    try:
        yield
    finally:
        if held:
            with contextlib.suppress(OSError):
                lock.release()


def is_temp_file(path: Path) -> bool:
    """A temporary file of `atomic_write` (never a result)."""
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)


def sweep_temp_files(folder: str | Path, older_than: float = STALE_SECONDS) -> int:
    """Delete `atomic_write` temp files under `folder` older than `older_than` seconds.

    Call it with `older_than=0` only while holding the folder's lock: a live writer's temp file
    is younger than any crash worth sweeping, and nobody else writes under a held lock.
    """
    now, removed = time.time(), 0
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            with contextlib.suppress(OSError):
                if is_temp_file(path) and now - path.stat().st_mtime >= older_than:
                    path.unlink()
                    removed += 1
    return removed


_WRITE_ERRORS = {getattr(errno, name): text for name, text in (
    ("ENOSPC", "no space left on device"), ("EROFS", "read-only file system"),
    ("EDQUOT", "disk quota exceeded"), ("EFBIG", "file too large")) if hasattr(errno, name)}


def os_error_text(e: OSError) -> str:
    """One line for an `OSError`: the path and the cause.

    >>> os_error_text(OSError(errno.ENOSPC, "No space left on device", "/runs/x/results.json"))
    "cannot write '/runs/x/results.json': no space left on device"
    >>> os_error_text(PermissionError(errno.EACCES, "Permission denied", "/runs"))
    "cannot access '/runs': permission denied"
    """
    cause = _WRITE_ERRORS.get(e.errno) or (e.strerror or str(e) or type(e).__name__)
    cause = cause[:1].lower() + cause[1:]
    if e.filename is None:
        return cause
    # only these errors are certainly about writing; a denied folder may be read or written
    verb = "write" if e.errno in _WRITE_ERRORS else "access"
    return f"cannot {verb} '{os.fsdecode(e.filename)}': {cause}"


def _jsonable(obj: Any) -> Any:
    """JSON fallback for numpy scalars/arrays, paths and dataclasses."""
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
