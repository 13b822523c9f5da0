"""Run folders on any fsspec file system: a local path, ``memory://``, ``s3://``, ``gs://``.

Why: a sweep on a cluster writes where every worker can reach (an object store), while a laptop
run writes to a local folder; the runner and the cache talk to a :class:`Store` and do not care
which. Writes are atomic on every back end: locally a temporary file renamed over the target
(:func:`atomic_write`); elsewhere the file is written locally and uploaded in one ``put``, and an
object store shows an object whole or not at all.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
from fsspec.implementations.local import LocalFileSystem

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once (umask can only be read by setting it)


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
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Store:
    """A folder given by a path or an fsspec URL; paths inside it are plain strings.

    ``Store("runs/x")``, ``Store("memory://runs/x")``, ``Store("s3://bucket/runs/x")`` (the last
    needs ``s3fs`` and credentials, as fsspec finds them).
    """

    def __init__(self, url: str | Path) -> None:
        self.url = str(url)
        self.fs, root = fsspec.core.url_to_fs(self.url)
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
        """Atomically create ``path`` from ``write(local_tmp_file)``."""
        if self.local:
            atomic_write(Path(path), write)
            return
        with tempfile.TemporaryDirectory(prefix="attrib-bench-") as folder:
            tmp = Path(folder) / Path(path).name
            write(tmp)
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(str(tmp), path)

    def write_text(self, path: str, text: str) -> None:
        self.write(path, lambda tmp: tmp.write_text(text))

    def read_bytes(self, path: str) -> bytes:
        return bytes(self.fs.cat_file(path))

    def read_text(self, path: str) -> str:
        return self.read_bytes(path).decode()

    def read_parquet(self, path: str, columns: list[str] | None = None) -> pd.DataFrame:
        with self.fs.open(path, "rb") as handle:
            return pd.read_parquet(handle, columns=columns)

    def glob(self, *parts: str) -> list[str]:
        """Sorted paths matching the pattern ``parts`` inside the folder."""
        return sorted(self.fs.glob(self.path(*parts)))

    def remove(self, path: str) -> None:
        """Delete a file or a folder (recursively); nothing if it is absent."""
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def makedirs(self) -> None:
        self.fs.makedirs(self.root, exist_ok=True)
