"""One filesystem layer for what the driver reads and writes outside Spark's table writers.

Run records, state files, swap manifests and the predict record go through Hadoop's FileSystem of
the running session, so the same code works on local paths and on any Hadoop URI (``hdfs://``,
``s3a://``, ``gs://``, ``file://``) with the connectors and credentials the cluster configured.
This is the only module that reaches into Spark's JVM gateway; the partition swaps of
:mod:`vidspark.outputs` use the Hadoop FileSystem object it hands out.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any

from pyspark.sql import SparkSession

from vidspark.errors import StorageError


def join(path: str, *names: str) -> str:
    """``path/name/...`` for local paths and ``scheme://`` URIs alike."""
    return posixpath.join(path.rstrip("/"), *names) if "://" in path else os.path.join(path, *names)


def sibling(path: str, name: str) -> str:
    """``/out/features`` -> ``/out/<name>``; works for local paths and ``scheme://`` URIs."""
    stripped = path.rstrip("/")
    if "://" in stripped:
        return posixpath.join(posixpath.dirname(stripped), name)
    return os.path.join(os.path.dirname(os.path.abspath(stripped)), name)


def basename(path: str) -> str:
    """The last component of a local path or a ``scheme://`` URI."""
    return posixpath.basename(path.rstrip("/")) if "://" in path else os.path.basename(os.path.abspath(path))


class FileSystem:
    """Hadoop's FileSystem for the scheme of ``path`` (``hdfs://``, ``s3a://``, local...), from the session's configuration."""

    def __init__(self, spark: SparkSession, path: str) -> None:
        jvm = spark.sparkContext._jvm
        assert jvm is not None, "no JVM: the SparkSession was stopped"
        self.jvm = jvm
        self.Path = jvm.org.apache.hadoop.fs.Path
        self.raw = self.Path(path).getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())  # type: ignore[union-attr]

    def exists(self, path: str) -> bool:
        return bool(self.raw.exists(self.Path(path)))

    def read_text(self, path: str) -> str:
        stream = self.raw.open(self.Path(path))
        try:
            return str(self.jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8"))
        finally:
            stream.close()

    def read_bytes(self, path: str) -> bytes:
        stream = self.raw.open(self.Path(path))
        try:
            return bytes(self.jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
        finally:
            stream.close()

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write one file in one go (on an object store: one PUT when the stream closes)."""
        out = self.raw.create(self.Path(path), True)
        try:
            out.write(bytearray(data))
        finally:
            out.close()

    def write_text(self, path: str, text: str) -> None:
        """Write a small text file, atomically by rename where the store renames atomically (local, HDFS)."""
        target, tmp = self.Path(path), self.Path(path + ".tmp")
        out = self.raw.create(tmp, True)
        try:
            out.write(bytearray(text.encode("utf-8")))
        finally:
            out.close()
        if self.raw.exists(target):
            self.raw.delete(target, False)
        if not self.raw.rename(tmp, target):
            raise StorageError(f"could not write {path!r}")

    def list_names(self, folder: str) -> list[str]:
        """Names of the entries of a folder (empty when it does not exist)."""
        p = self.Path(folder)
        return sorted(str(st.getPath().getName()) for st in self.raw.listStatus(p)) if self.raw.exists(p) else []

    def rename(self, path: str, target: str) -> None:
        if not self.raw.rename(self.Path(path), self.Path(target)):
            raise StorageError(f"could not move {path!r} to {target!r}")

    def delete(self, path: str, *, recursive: bool = True) -> bool:
        return bool(self.raw.delete(self.Path(path), recursive))

    def status(self, path: Any) -> list[Any]:
        """Hadoop ``FileStatus`` entries of a folder (a path string or a Hadoop ``Path``)."""
        return list(self.raw.listStatus(self.Path(path) if isinstance(path, str) else path))

    def put_dir(self, local: str, target: str) -> None:
        """Copy a local folder to ``target`` beside which it is staged, then swap it in by renames.

        Atomic where the store renames atomically (HDFS, local); on object stores (s3a, gs) renames are
        copies, so a reader there can briefly see a half-moved folder.
        """
        staged, old = self.Path(f"{target.rstrip('/')}.tmp-{os.getpid()}"), self.Path(f"{target.rstrip('/')}.old-{os.getpid()}")
        self.raw.delete(staged, True)
        self.raw.copyFromLocalFile(False, True, self.Path(local), staged)
        dest = self.Path(target)
        if self.raw.exists(dest) and not self.raw.rename(dest, old):
            raise StorageError(f"could not move the previous {target!r} aside")
        if not self.raw.rename(staged, dest):
            raise StorageError(f"could not move the new {target!r} into place")
        self.raw.delete(old, True)

    def get_dir(self, source: str, local: str) -> None:
        """Copy a folder to a local path (no checksum files)."""
        self.raw.copyToLocalFile(False, self.Path(source), self.Path(local), True)


def is_hadoop_uri(path: str) -> bool:
    """Whether ``path`` is a ``scheme://`` URI that Hadoop's FileSystem resolves (a plain path is local)."""
    return "://" in path
