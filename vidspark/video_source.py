"""Video objects as bytes: which keys are videos, container sniffing, streaming S3 reads, declared sizes.

Local files are opened by FFmpeg itself; S3 objects through :class:`RangeReader`, which fetches
fixed-size ranges (``IfMatch`` on the listed ETag) and keeps at most two of them, so memory does not
depend on the object's size. Nothing here decodes; :mod:`vidspark.video` does.
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from typing import Any

from vidspark.config import StorageConf, VideoConf
from vidspark.storage import get_object_bytes, split_s3_uri

VIDEO_EXTENSIONS = frozenset({"mp4", "m4v", "mov", "qt", "mkv", "webm", "avi", "ts", "mts", "m2ts", "mpg", "mpeg", "flv", "3gp", "wmv", "asf", "ogv"})
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "jpe", "jfif", "png", "webp", "bmp", "tif", "tiff", "gif"})
_IMAGE_FTYP_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis")
SNIFF_BYTES = 512


def kind_of_key(key: str) -> str:
    """``image`` or ``video`` from the key's extension; ``auto`` (decided by content) otherwise."""
    name = key.rsplit("/", 1)[-1]
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if ext in VIDEO_EXTENSIONS:
        return "video"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    return "auto"


def sniff_is_video(head: bytes) -> bool:
    """Whether the first bytes of an object are a video container (MP4/MOV, Matroska/WebM, AVI, MPEG-TS/PS, FLV, ASF)."""
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return head[8:12] not in _IMAGE_FTYP_BRANDS  # HEIF/AVIF stills share the ISO box format
    if head[:4] == b"\x1a\x45\xdf\xa3" or head[:3] == b"FLV" or head[:4] == b"\x30\x26\xb2\x75":
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return True
    if head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"):
        return True
    if len(head) > 376 and head[0] == 0x47 and head[188] == 0x47 and head[376] == 0x47:
        return True
    return len(head) >= 8 and head[4:8] in (b"moov", b"mdat", b"wide", b"free") and head[:3] == b"\x00\x00\x00"


class RangeReader(io.RawIOBase):
    """A seekable read-only file over one S3 object, fetched in ``block_size`` ranges.

    At most ``max_blocks`` blocks are held (least recently used dropped), so memory stays bounded
    whatever the object's size. Every range GET carries ``IfMatch`` with the listed ETag: an object
    replaced while it is read raises instead of mixing two versions. The last storage exception is
    kept in :attr:`error` (PyAV reports a read failure as an I/O error of its own).
    """

    def __init__(self, client: Any, uri: str, *, size: int, etag: str | None, block_size: int, max_blocks: int = 2, attempts: int = 5) -> None:
        super().__init__()
        bucket, key = split_s3_uri(uri)
        self.client, self.bucket, self.key, self.size, self.etag = client, bucket, key, int(size), etag
        self.block_size, self.max_blocks, self.attempts = int(block_size), max_blocks, attempts
        self.pos = 0
        self.blocks: OrderedDict[int, bytes] = OrderedDict()
        self.requests = 0
        self.bytes_fetched = 0
        self.max_buffered = 0
        self.error: BaseException | None = None

    def fresh(self) -> RangeReader:
        """Another reader of the same object, with its own position and blocks (for a second container)."""
        bucket_uri = f"s3://{self.bucket}/{self.key}"
        return RangeReader(self.client, bucket_uri, size=self.size, etag=self.etag, block_size=self.block_size, max_blocks=self.max_blocks, attempts=self.attempts)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def _block(self, n: int) -> bytes:
        data = self.blocks.get(n)
        if data is not None:
            self.blocks.move_to_end(n)
            return data
        start = n * self.block_size
        end = min(self.size, start + self.block_size) - 1
        try:
            data = get_object_bytes(self.client, bucket=self.bucket, key=self.key, etag=self.etag, byte_range=f"bytes={start}-{end}", attempts=self.attempts)
        except Exception as exc:
            self.error = exc
            raise
        self.requests += 1
        self.bytes_fetched += len(data)
        self.blocks[n] = data
        while len(self.blocks) > self.max_blocks:
            self.blocks.popitem(last=False)
        self.max_buffered = max(self.max_buffered, sum(len(b) for b in self.blocks.values()))
        return data

    def readinto(self, buffer: Any) -> int:
        if self.pos >= self.size:
            return 0
        n_block, offset = divmod(self.pos, self.block_size)
        data = self._block(n_block)
        view = memoryview(buffer).cast("B")
        n = min(len(view), len(data) - offset)
        view[:n] = data[offset : offset + n]
        self.pos += n
        return n


def open_source(uri: str, *, size: int, etag: str | None, sconf: StorageConf, vconf: VideoConf) -> Any:
    """What :func:`av.open` reads: a local path as is, an S3 object as a :class:`RangeReader`."""
    if uri.startswith("s3://"):
        from vidspark.storage import cached_s3_client

        return RangeReader(cached_s3_client(sconf), uri, size=size, etag=etag, block_size=vconf.read_block_bytes, attempts=sconf.max_attempts)
    return uri


def read_head(source: Any, n: int = SNIFF_BYTES) -> bytes:
    """The first ``n`` bytes of a source from :func:`open_source`."""
    if isinstance(source, RangeReader):  # n bytes, not a whole read block
        return get_object_bytes(source.client, bucket=source.bucket, key=source.key, etag=source.etag, byte_range=f"bytes=0-{max(0, min(n, source.size) - 1)}", attempts=source.attempts)
    with open(source, "rb") as fh:
        return fh.read(n)


def is_storage_error(source: Any) -> bool:
    """Whether the last failure reading ``source`` came from storage (an S3 read), not from the data."""
    return isinstance(source, RangeReader) and source.error is not None


def _ebml_vint(buf: bytes, pos: int, *, marker: bool) -> tuple[int | None, int]:
    """One EBML variable-length integer at ``pos``: (value, next position); value None where unknown or cut off."""
    if pos >= len(buf) or buf[pos] == 0:
        return None, len(buf)
    length = 9 - buf[pos].bit_length()
    if pos + length > len(buf):
        return None, len(buf)
    value = buf[pos] if marker else buf[pos] & ((1 << (8 - length)) - 1)
    for b in buf[pos + 1 : pos + length]:
        value = (value << 8) | b
    if not marker and value == (1 << (7 * length)) - 1:
        return None, pos + length  # "unknown size" (a live recording)
    return value, pos + length


def ebml_segment_end(head: bytes) -> int | None:
    """Where a Matroska/WebM file's Segment says the file ends (EBML header, then Segment's ID and size), or None."""
    ident, pos = _ebml_vint(head, 0, marker=True)
    size, pos = _ebml_vint(head, pos, marker=False)
    if ident != 0x1A45DFA3 or size is None:
        return None
    ident, pos = _ebml_vint(head, pos + size, marker=True)
    size, pos = _ebml_vint(head, pos, marker=False)
    return pos + size if ident == 0x18538067 and size is not None else None


def file_size(path: str) -> int:

    return os.path.getsize(path)
