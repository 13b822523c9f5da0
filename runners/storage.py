"""Run folders on any fsspec file system: a local path, ``memory://``, ``s3://``, ``gs://``.

Why: a sweep on a cluster writes where every worker can reach (an object store), while a laptop
run writes to a local folder; the runner and the cache talk to a :class:`Store` and do not care
which. Writes are atomic on every back end: locally a temporary file renamed over the target
(:func:`atomic_write`); elsewhere the file is written locally and uploaded in one ``put``, and an
object store shows an object whole or not at all.

**Paths are literal.** A folder's own path is never read as a pattern: ``exp[1]``, ``a*b``,
``what?`` and ``a::b`` name those folders. fsspec's ``glob`` (and its ``rm`` elsewhere than on a
local disk, which globs first) read ``[ ]``, ``*`` and ``?`` anywhere in a path, and its URL parser
reads ``::`` as a chain of file systems; so :meth:`Store.glob` matches patterns only in the parts
below the folder (by listing and :func:`fnmatch.fnmatchcase`), :meth:`Store.remove` deletes
what a literal listing finds, and a path without ``PROTOCOL://`` or ``PROTOCOL::`` is a local path.

**One run per local folder.** :meth:`Store.lock` holds an exclusive ``flock`` on the folder's
:data:`LOCK_FILE` while a run writes there; a second run on the folder refuses at once, in one
line naming the first (pid, host, start, command). The operating system drops the lock when the
holding process ends, killed included: a stale lock cannot block a re-run. Folders on other
fsspec file systems (``s3://``, ``gs://``, ``memory://``) are not locked (object stores have no
lock): give concurrent runs different folders; if two runs did share one, a plain re-run of
either command recovers the exact tables (chunks are named by their content).

**Write errors name the file.** An ``OSError`` of a write (a full disk, a quota, a folder made
read-only or not writable mid-run) carries the path of the file being written
(``exc.filename``), so that the runner can say what filled up and where.
"""

from __future__ import annotations

import contextlib
import datetime
import fnmatch
import io
import json
import os
import re
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
from fsspec.implementations.local import LocalFileSystem

from attrib_bench.core.errors import RunError

try:  # POSIX; elsewhere (Windows) local folders are not locked
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS
    fcntl = None  # type: ignore[assignment]

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once (umask can only be read by setting it)

#: The file in a local run folder that a run holds locked (:meth:`Store.lock`).
LOCK_FILE = ".attrib-bench.lock"
#: Characters that :func:`fnmatch.fnmatchcase` reads as a pattern.
_MAGIC = re.compile(r"[*?[]")
#: An fsspec URL: ``PROTOCOL://...`` or a chain ``PROTOCOL::...``; anything else is a local path.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*(://|::)")


class FolderInUseError(RunError):
    """Another run holds the run folder's lock (:meth:`Store.lock`)."""


def slug(name: str) -> str:
    """A file-system-safe file or folder name for a model, method or metric name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "_"


def parquet_bytes(table: pd.DataFrame) -> bytes:
    """``table`` as Parquet bytes, zstd-compressed, float columns byte-stream-split.

    Lossless and read by any pandas/pyarrow: the float64 values (pixel-removal curves at the
    paper's n are most of a run's table) compress poorly as they are; splitting their bytes
    into streams first makes zstd find the shared exponents. On a 705 480-row run
    (``results/cifar10/gradient-bcos``) 3.9 MB instead of pandas' default snappy 5.5 MB.
    """
    floats = [c for c in table.columns if pd.api.types.is_float_dtype(table[c].dtype)]
    others = [c for c in table.columns if c not in floats]
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False, compression="zstd", use_byte_stream_split=floats,
                     use_dictionary=others)
    return buffer.getvalue()


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    A reader (or a resumed run) sees the old file or the whole new one, never a partial file.
    An ``OSError`` without a file name (``write()`` on a full disk) gets ``path`` as its name.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not exc.filename:
            exc.filename = str(path)
        raise


class Store:
    """A folder given by a path or an fsspec URL; paths inside it are plain strings.

    ``Store("runs/x")``, ``Store("memory://runs/x")``, ``Store("s3://bucket/runs/x")`` (the last
    needs ``s3fs`` and credentials, as fsspec finds them).
    """

    def __init__(self, url: str | Path) -> None:
        self.url = str(url)
        if _URL.match(self.url):
            self.fs, root = fsspec.core.url_to_fs(self.url)
        else:  # a local path, taken literally (url_to_fs would cut "a::b" to "a")
            self.fs = LocalFileSystem()
            root = LocalFileSystem._strip_protocol(self.url)
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = root.rstrip("/") or "/"

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def child(self, *parts: str) -> Store:
        """The sub-folder ``parts`` as a store (fsspec reuses the file-system instance)."""
        return Store("/".join([self.url.rstrip("/"), *parts]))

    def path(self, *parts: str) -> str:
        """The path of ``parts`` inside the folder."""
        return "/".join([self.root, *parts]) if parts else self.root

    def exists(self, path: str) -> bool:
        return bool(self.fs.exists(path))

    def write(self, path: str, write: Callable[[Path], Any]) -> None:
        """Atomically create ``path`` from ``write(local_tmp_file)``.

        An ``OSError`` (a full disk, a quota, a permission) propagates with ``filename`` set to
        ``path`` when the system left it unset (``write()`` on a full disk names no file)."""
        try:
            if self.local:
                atomic_write(Path(path), write)
                return
            with tempfile.TemporaryDirectory(prefix="attrib-bench-") as folder:
                tmp = Path(folder) / Path(path).name
                write(tmp)
                self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
                self.fs.put_file(str(tmp), path)
        except OSError as exc:
            if not exc.filename:
                exc.filename = path
            raise

    def write_text(self, path: str, text: str) -> None:
        self.write(path, lambda tmp: tmp.write_text(text))

    def read_bytes(self, path: str) -> bytes:
        return bytes(self.fs.cat_file(path))

    def read_text(self, path: str) -> str:
        return self.read_bytes(path).decode()

    def read_parquet(self, path: str, columns: list[str] | None = None) -> pd.DataFrame:
        with self.fs.open(path, "rb") as handle:
            return pd.read_parquet(handle, columns=columns)

    def glob(self, *patterns: str) -> list[str]:
        """Sorted paths inside the folder whose levels match ``patterns``, one
        :func:`fnmatch.fnmatchcase` pattern per level (``*``, ``?``, ``[seq]``; no ``**``):
        ``glob("parts", "*", "chunk-*.parquet")``.

        The folder's own path is literal (see the module doc): only ``patterns`` are patterns.
        A level that holds a literal name with ``[``, ``*`` or ``?`` must be escaped
        (:func:`glob.escape`); :func:`slug` names have none of them."""
        found = [self.root]
        for depth, pattern in enumerate(patterns):
            last = depth == len(patterns) - 1
            if not _MAGIC.search(pattern):
                found = [f"{folder.rstrip('/')}/{pattern}" for folder in found]
                continue
            found = [f"{folder.rstrip('/')}/{name}" for folder in found
                     for name, is_dir in self._entries(folder)
                     if (last or is_dir) and fnmatch.fnmatchcase(name, pattern)]
        if not patterns or not _MAGIC.search(patterns[-1]):  # literal last level: must exist
            found = [path for path in found if self.fs.exists(path)]
        return sorted(found)

    def _entries(self, folder: str) -> list[tuple[str, bool]]:
        """(name, is a folder) of each entry of ``folder``, listed literally; [] if it is not a
        folder."""
        if self.local:
            try:
                with os.scandir(folder) as entries:
                    return [(e.name, e.is_dir()) for e in entries]
            except (FileNotFoundError, NotADirectoryError):
                return []
        try:
            listed = self.fs.ls(folder, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        base = folder.rstrip("/")
        return [(entry["name"].rstrip("/").rsplit("/", 1)[-1], entry["type"] == "directory")
                for entry in listed if entry["name"].rstrip("/") != base]  # ls(file): itself

    def remove(self, path: str) -> None:
        """Delete a file or a folder (recursively); nothing if it is absent. ``path`` is
        literal: fsspec's ``rm`` globs a path with ``[``, ``*`` or ``?`` first (on a file system
        other than the local one), so such a folder is emptied by a literal listing."""
        if not self.fs.exists(path):
            return
        if self.local or not _MAGIC.search(path):
            self.fs.rm(path, recursive=True)
            return
        if not self.fs.isdir(path):
            self.fs.rm_file(path)
            return
        found = self.fs.find(path, withdirs=True, detail=True)
        for name in sorted(found, key=len, reverse=True):  # the deepest first
            if found[name]["type"] != "directory":
                self.fs.rm_file(name)
        for name in [*sorted(found, key=len, reverse=True), path]:
            if name in found and found[name]["type"] != "directory":
                continue
            with contextlib.suppress(OSError, NotImplementedError):
                self.fs.rmdir(name)  # a pseudo-folder (memory://); object stores have none

    def makedirs(self) -> None:
        self.fs.makedirs(self.root, exist_ok=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder for one run: an exclusive ``flock`` on its :data:`LOCK_FILE`
        (the folder is created), released when the block ends or the process does.

        A folder that cannot be created (its parent takes no folders, as under ``/proc``):
        one :class:`RunError` line. Another holder: :class:`FolderInUseError`, one line naming
        it (pid, host, start and command, which the holder writes into the file) and what to
        do. Nothing happens for a
        folder that is not local, or where ``fcntl`` or ``flock`` is missing (see the module
        doc). A folder this call created that holds nothing but the lock file afterwards (the
        run stopped before writing) is removed again."""
        if not self.local or fcntl is None:
            yield
            return
        created = not os.path.isdir(self.root)
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as exc:  # e.g. under /proc: a parent that exists but takes no folders
            raise RunError(f"cannot create the folder {self.root}: {exc.strerror}; choose a "
                           "folder you can write (--out)") from None
        path = os.path.join(self.root, LOCK_FILE)
        fd = _locked(path, self.root)
        try:
            if fd is not None:
                try:
                    os.ftruncate(fd, 0)
                    os.write(fd, json.dumps(_holder()).encode())
                except OSError as exc:  # a full disk: name the file, as other writes do
                    raise OSError(exc.errno, exc.strerror, path) from None
            yield
        finally:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                    if created and os.listdir(self.root) == [LOCK_FILE]:
                        os.unlink(path)
                        os.rmdir(self.root)
                os.close(fd)  # releases the lock


def _holder() -> dict[str, Any]:
    """What a run writes into the lock file it holds: who to name to a second run."""
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]
            if sys.argv and sys.argv[0] else "python"}


def _locked(path: str, folder: str) -> int | None:
    """A descriptor of ``path`` holding its exclusive ``flock`` (None where the file system
    has no locks); :class:`FolderInUseError` if another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderInUseError(f"{folder} is in use by another run ({_describe_holder(path)})"
                                   ": wait until it ends, then run this command again (it "
                                   "resumes from what that run wrote), or pass another --out"
                                   ) from None
        except OSError:  # a file system without locks (ENOLCK, EOPNOTSUPP): run unlocked
            os.close(fd)
            return None
        try:  # the holder before us may have removed the file: lock the one at path
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _describe_holder(path: str) -> str:
    """The lock file's holder as the error names it: "pid 12 on host h since T: COMMAND"."""
    try:
        with open(path, encoding="utf-8") as handle:
            holder = json.loads(handle.read() or "{}")
    except (OSError, ValueError):
        holder = {}
    if not isinstance(holder, dict) or "pid" not in holder:
        return "its pid is not recorded yet"
    text = f"pid {holder['pid']} on host {holder.get('host', '?')}"
    if holder.get("started"):
        text += f" since {holder['started']}"
    command = " ".join(str(holder.get("command") or "").split())
    if command:
        text += f": {command[:120]}{'…' if len(command) > 120 else ''}"
    return text
