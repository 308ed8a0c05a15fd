"""Job folders on disk: safe file names, streaming multipart bodies into a folder, and zipping a folder.

Every uploaded name is reduced to a base name, so nothing is written outside the folder being filled;
zips are built from a folder without following links out of it, and written beside their destination
under a temporary name before being moved into place, so a reader never sees half an archive.
"""

import os
import re
import secrets
import shutil
import stat
import threading
import time
import zipfile
import zlib
from pathlib import Path

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from orch.errors import BadRequest, PayloadTooLarge

CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME_BYTES = 255
MAX_FIELD_SIZE = 64 * 1024
MAX_FIELDS = 100  # text fields in one body
MAX_TEXT_SIZE = 1024 * 1024  # bytes of text fields in one body, all together
COPY_CHUNK = 1024 * 1024
ZIP_LEVEL = 1  # fast deflate: results are mostly text that shrinks well even at the lowest level
SAMPLE_FROM = 1024 * 1024  # files from this size are sampled before being compressed
SAMPLE = 256 * 1024


def safe_name(filename: str) -> str:
    """The base name of an uploaded file name, without control characters ("file" if nothing is left).

    `../../etc/passwd` -> `passwd`, `/a/b.txt` -> `b.txt`, `""`, `/`, `..` -> `file`. Raises BadRequest
    when the name is too long for the file system.
    """
    name = CONTROL_CHARACTERS.sub("", filename).rsplit("/", 1)[-1]
    if name in ("", ".", ".."):
        return "file"
    if len(name.encode()) > MAX_NAME_BYTES:
        raise BadRequest(f"file name too long: {name[:40]}...")
    return name


def new_name() -> str:
    """A unique name for a folder or scratch file: 32 hex digits, the time in nanoseconds then 64 random bits.

    Names in time order keep the database's unique index of job folders growing at one end: with random
    names, each upload over a history of a million jobs wrote to a page anywhere in that index."""
    return f"{time.time_ns():016x}{secrets.token_hex(8)}"


def scratch_file(tmp_path: Path, prefix: str, suffix: str) -> Path:
    """A new, unique path for a scratch file in `tmp_path` (created if missing); the caller removes the file."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    return tmp_path / f"{prefix}-{new_name()}{suffix}"


def remove(path: Path) -> None:
    """Remove a folder or file if it exists (blocking: call it in an executor for big folders)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class MultipartReceiver:
    """Parses a multipart/form-data body fed chunk by chunk: parts with a filename are streamed into
    `folder` under their safe base name (a repeated name overwrites), other parts are text fields.

    Memory stays flat whatever the size of the files: text fields are limited to MAX_FIELD_SIZE each,
    MAX_FIELDS in number and MAX_TEXT_SIZE in all (the parser limits the headers of parts).
    """

    def __init__(self, content_type: str, folder: Path):
        kind, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise BadRequest("expected a multipart/form-data body with a boundary")
        try:
            self._parser = MultipartParser(
                boundary,
                callbacks={
                    "on_part_begin": self._part_begin,
                    "on_header_field": self._header_field,
                    "on_header_value": self._header_value,
                    "on_header_end": self._header_end,
                    "on_headers_finished": self._headers_finished,
                    "on_part_data": self._part_data,
                    "on_part_end": self._part_end,
                    "on_end": self._end,
                },
            )
        except ValueError as e:
            raise BadRequest(f"bad multipart boundary: {e}") from None
        self.folder = folder
        self.fields: dict[str, str] = {}
        self.files: list[str] = []
        self.complete = False
        self._headers: dict[bytes, bytes] = {}
        self._header = [bytearray(), bytearray()]
        self._file = None
        self._field_name: str | None = None
        self._value = bytearray()
        self._text_size = 0
        self._field_count = 0

    def feed(self, chunk: bytes) -> None:
        """Parse the next chunk of the body. Raises BadRequest on a malformed body."""
        if self.complete:
            return  # anything after the closing boundary is an epilogue, ignored as the RFC says
        try:
            self._parser.write(chunk)
        except MultipartParseError as e:
            self.close()
            raise BadRequest(f"malformed multipart body: {e}") from None
        except OSError as e:
            self.close()
            raise BadRequest(f"could not save file: {e.strerror}") from None

    def finish(self) -> tuple[dict[str, str], list[str]]:
        """The text fields and the saved file names, once the whole body has been fed."""
        self.close()
        if not self.complete:
            raise BadRequest("malformed multipart body: it ends before its closing boundary")
        return self.fields, self.files

    def close(self) -> None:
        """Close the file being written, if any (after an error or a dropped connection)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _part_begin(self) -> None:
        self._headers = {}
        self._field_name = None
        self._value = bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header[0] += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._header[1] += data[start:end]

    def _header_end(self) -> None:
        name, value = self._header
        self._headers[bytes(name).lower().strip()] = bytes(value)
        self._header = [bytearray(), bytearray()]

    def _headers_finished(self) -> None:
        disposition = self._headers.get(b"content-disposition")
        if disposition is None:
            raise BadRequest("malformed multipart body: a part has no Content-Disposition header")
        _, params = parse_options_header(disposition)
        if b"filename" in params:
            name = safe_name(params[b"filename"].decode("utf-8", "replace"))
            self._file = open(self.folder / name, "wb")  # closed in _part_end or close()
            self.files.append(name)
        else:
            self._field_count += 1
            if self._field_count > MAX_FIELDS:
                raise BadRequest(f"more than {MAX_FIELDS} text fields")
            self._field_name = params.get(b"name", b"").decode("utf-8", "replace")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self._file.write(memoryview(data)[start:end])
            return
        self._text_size += end - start
        if self._text_size > MAX_TEXT_SIZE:
            raise PayloadTooLarge(f"the text fields take more than {MAX_TEXT_SIZE} bytes in all")
        self._value += data[start:end]
        if len(self._value) > MAX_FIELD_SIZE:
            raise BadRequest(f"field {self._field_name!r} is larger than {MAX_FIELD_SIZE} bytes")

    def _part_end(self) -> None:
        if self._file is not None:
            self.close()
            return
        try:
            self.fields[self._field_name or ""] = self._value.decode()
        except UnicodeDecodeError:
            raise BadRequest(f"field {self._field_name!r} is not valid UTF-8") from None

    def _end(self) -> None:
        self.complete = True


class ZipStopped(Exception):
    """A zip was stopped before it was done (its job was killed, or ran out of time)."""


def zip_folder(folder: Path, dest: Path, stop: threading.Event | None = None) -> None:
    """Write a zip of everything under `folder` to `dest`, atomically; raise ZipStopped, leaving nothing, once
    `stop` is set.

    Links are stored as links (their target text), never followed, so a link to a file outside the folder
    does not ship that file; fifos, sockets and devices are skipped. Entries are plain relative paths (see
    `zip_name`) without setuid, setgid or sticky bits. Blocking: run it in an executor.
    """
    tmp = dest.with_name(f".{dest.name}.{new_name()}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=ZIP_LEVEL) as archive:
            names: set[str] = set()
            for dirpath, dirnames, filenames, dirfd in os.fwalk(folder, follow_symlinks=False):
                dirnames.sort()
                prefix = os.path.relpath(dirpath, folder)
                prefix = "" if prefix == "." else prefix + "/"
                for name in sorted(dirnames + filenames):
                    if stop is not None and stop.is_set():
                        raise ZipStopped()
                    _add_entry(archive, _unique(zip_name(prefix + name), names), name, dirfd, stop)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def zip_name(path: str) -> str:
    """A path in a folder as a plain relative path in a zip. Linux names hold no `..` part, but a backslash is a
    separator to unzip tools on Windows: it is `_` (`..\\..\\evil.txt` -> `.._.._evil.txt`)."""
    return path.replace("\\", "_")


def _unique(name: str, taken: set[str]) -> str:
    """`name`, or `name~2`, `name~3`... when a rewritten name is taken already."""
    candidate, number = name, 1
    while candidate in taken:
        number += 1
        candidate = f"{name}~{number}"
    taken.add(candidate)
    return candidate


def _add_entry(archive: zipfile.ZipFile, arcname: str, name: str, dirfd: int, stop: threading.Event | None) -> None:
    try:
        info = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return  # removed while we walked (a running job's partial download)
    entry = zipfile.ZipInfo(arcname + ("/" if stat.S_ISDIR(info.st_mode) else ""), _zip_time(info.st_mtime))
    entry.create_system = 3  # unix, so the mode bits below are honoured
    entry.external_attr = (info.st_mode & ~(stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX) & 0xFFFF) << 16
    if stat.S_ISDIR(info.st_mode):
        archive.writestr(entry, b"")
    elif stat.S_ISLNK(info.st_mode):
        archive.writestr(entry, os.readlink(name, dir_fd=dirfd))
    elif stat.S_ISREG(info.st_mode):
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dirfd)
        except OSError:
            return  # replaced by a link or removed since the stat: never follow it
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return  # replaced by a fifo or a device since the stat
        with os.fdopen(fd, "rb") as source:
            entry.compress_type = _compression(source, info.st_size)
            entry.file_size = info.st_size
            with archive.open(entry, "w", force_zip64=info.st_size > zipfile.ZIP64_LIMIT // 2) as target:
                while chunk := source.read(COPY_CHUNK):
                    if stop is not None and stop.is_set():
                        raise ZipStopped()
                    target.write(chunk)


def _compression(source, size: int) -> int:
    """Deflate, unless a sample of a big file shows that it does not shrink (compressed data, random
    numbers): storing it as it is then saves seconds per hundred megabytes for nothing lost."""
    if size < SAMPLE_FROM:
        return zipfile.ZIP_DEFLATED
    sample = source.read(SAMPLE)
    source.seek(0)
    shrinks = len(zlib.compress(sample, ZIP_LEVEL)) < 0.9 * len(sample)
    return zipfile.ZIP_DEFLATED if shrinks else zipfile.ZIP_STORED


def _zip_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    """Zip timestamps start in 1980; older files get that date rather than an error."""
    return max(time.localtime(mtime)[:6], (1980, 1, 1, 0, 0, 0))
