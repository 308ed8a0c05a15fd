"""orch/storage.py on real files: safe names, multipart bodies streamed into a folder, and zips of a folder."""

import hashlib
import os
import random
import re
import stat
import threading
import time
import zipfile
from pathlib import Path

import pytest

from orch.errors import BadRequest
from orch.storage import MAX_FIELD_SIZE, MultipartReceiver, ZipStopped, new_name, safe_name, zip_folder
from tests.conftest import WAIT_TIMEOUT, data_files, multipart

BOUNDARY = "XyZ-boundary-1234"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


# --- safe_name ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("normal.txt", "normal.txt"),
        ("run.sh", "run.sh"),
        ("../../../etc/passwd", "passwd"),
        ("../../file.txt", "file.txt"),
        ("dir/../file.txt", "file.txt"),
        ("/absolute/path/to/file.txt", "file.txt"),
        ("/etc/passwd", "passwd"),
        ("path//to///file.txt", "file.txt"),
        ("", "file"),
        ("/", "file"),
        ("../../../", "file"),
        (".", "file"),
        ("..", "file"),
        ("a/..", "file"),
        ("C:\\Windows\\System32\\x.txt", "C:\\Windows\\System32\\x.txt"),
        ("..\\..\\x.txt", "..\\..\\x.txt"),
        ("données_ü_文件.txt", "données_ü_文件.txt"),
        ("v1..2.txt", "v1..2.txt"),
        (".hidden", ".hidden"),
    ],
)
def test_safe_name_keeps_only_the_base_name(given, expected):
    """Like the original's sanitize_filename: the last `/` component, `file` when nothing usable is left."""
    assert safe_name(given) == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("a\nb.txt", "ab.txt"),
        ("a\r\nb.txt", "ab.txt"),
        ("nul\x00.txt", "nul.txt"),
        ("del\x7f.txt", "del.txt"),
        ("tab\there.txt", "tabhere.txt"),
        ("\x1b[31mred", "[31mred"),
        ("\n", "file"),
        (".\x00.", "file"),
        ("../\n/passwd", "passwd"),
    ],
)
def test_safe_name_removes_control_characters(given, expected):
    assert safe_name(given) == expected


def test_safe_name_accepts_a_name_of_exactly_255_bytes():
    name = "é" * 127 + "x"  # 255 bytes in UTF-8
    assert safe_name("dir/" + name) == name


@pytest.mark.parametrize("name", ["x" * 256, "é" * 128, "../" + "y" * 300])
def test_safe_name_refuses_a_name_over_255_bytes(name):
    with pytest.raises(BadRequest) as raised:
        safe_name(name)
    assert raised.value.status == 400


# --- MultipartReceiver -------------------------------------------------------------------------------------


def part(disposition: str, content: bytes, extra_headers: str = "") -> bytes:
    """One part of a body with BOUNDARY, its Content-Disposition given verbatim."""
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n{extra_headers}\r\n"
    return head.encode() + content + b"\r\n"


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def receive(
    folder: Path, data: bytes, chunks: list[bytes] | None = None, content_type: str = CONTENT_TYPE
) -> tuple[dict[str, str], list[str]]:
    """Feed `data` (or the given chunks) to a receiver into `folder` and return what finish() returns."""
    folder.mkdir(exist_ok=True)
    receiver = MultipartReceiver(content_type, folder)
    for chunk in chunks if chunks is not None else [data]:
        receiver.feed(chunk)
    return receiver.finish()


def split_randomly(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, min(60, len(data) - 1))))
    return [data[start:end] for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def contents(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in data_files(folder)}


TRICKY = bytes(range(256)) + b"\r\n\r\nx--" + BOUNDARY.encode() + b"\r\n--XyZ-bound!\r\n-\r\n--\r\n"
MIXED_BODY = body(
    part('form-data; name="user_id"', b"42"),
    part(
        'form-data; name="file"; filename="run.sh"',
        b"#!/bin/bash\necho hello\n",
        "Content-Type: application/octet-stream\r\n",
    ),
    part('form-data; name="service"', "ünïcode ✓".encode()),
    part('form-data; name="file"; filename="data.bin"', TRICKY, "Content-Type: application/octet-stream\r\n"),
    part('form-data; name="file"; filename="empty.txt"', b""),
    part('form-data; name="note"', b"line one\r\nline two"),
)
MIXED_FIELDS = {"user_id": "42", "service": "ünïcode ✓", "note": "line one\r\nline two"}
MIXED_FILES = {"run.sh": b"#!/bin/bash\necho hello\n", "data.bin": TRICKY, "empty.txt": b""}


def test_body_fed_in_one_piece_gives_its_fields_and_files(tmp_path):
    fields, files = receive(tmp_path / "job", MIXED_BODY)
    assert fields == MIXED_FIELDS
    assert files == ["run.sh", "data.bin", "empty.txt"]
    assert contents(tmp_path / "job") == MIXED_FILES


def test_body_fed_one_byte_at_a_time_gives_the_same_result(tmp_path):
    chunks = [MIXED_BODY[i : i + 1] for i in range(len(MIXED_BODY))]
    fields, files = receive(tmp_path / "job", MIXED_BODY, chunks)
    assert fields == MIXED_FIELDS
    assert files == ["run.sh", "data.bin", "empty.txt"]
    assert contents(tmp_path / "job") == MIXED_FILES


@pytest.mark.parametrize("seed", range(20))
def test_body_split_at_random_points_gives_the_same_result(tmp_path, seed):
    fields, files = receive(tmp_path / "job", MIXED_BODY, split_randomly(MIXED_BODY, seed))
    assert fields == MIXED_FIELDS
    assert files == ["run.sh", "data.bin", "empty.txt"]
    assert contents(tmp_path / "job") == MIXED_FILES


def test_body_built_like_a_portal_does_is_received(tmp_path):
    """The conftest helper's body (what the integration tests upload) parses into the same fields and files."""
    data, content_type = multipart({"user_id": "7", "service": "example"}, {"run.sh": b"exit 0\n", "in.pdb": b"ATOM"})
    fields, files = receive(tmp_path / "job", data, content_type=content_type)
    assert fields == {"user_id": "7", "service": "example"}
    assert sorted(files) == ["in.pdb", "run.sh"]
    assert contents(tmp_path / "job") == {"in.pdb": b"ATOM", "run.sh": b"exit 0\n"}


def test_every_part_with_a_filename_is_a_file_whatever_its_field_name(tmp_path):
    data = body(
        part('form-data; name="anything"; filename="a.txt"', b"A"),
        part('form-data; name="user_id"; filename="b.txt"', b"B"),
        part('form-data; filename="c.txt"', b"C"),
        part('form-data; name="files[]"; filename="d.txt"', b"D"),
    )
    fields, files = receive(tmp_path / "job", data)
    assert fields == {}
    assert files == ["a.txt", "b.txt", "c.txt", "d.txt"]
    assert contents(tmp_path / "job") == {"a.txt": b"A", "b.txt": b"B", "c.txt": b"C", "d.txt": b"D"}


def test_a_repeated_file_name_is_overwritten_by_the_last_one(tmp_path):
    data = body(
        part('form-data; name="file"; filename="same.txt"', b"first, and longer than the second"),
        part('form-data; name="file"; filename="dir/same.txt"', b"second"),
    )
    _, files = receive(tmp_path / "job", data)
    assert set(files) == {"same.txt"}
    assert contents(tmp_path / "job") == {"same.txt": b"second"}


def test_a_repeated_field_keeps_its_last_value(tmp_path):
    data = body(part('form-data; name="user_id"', b"1"), part('form-data; name="user_id"', b"2"))
    fields, _ = receive(tmp_path / "job", data)
    assert fields == {"user_id": "2"}


def test_header_names_are_case_insensitive(tmp_path):
    data = (
        f'--{BOUNDARY}\r\ncontent-disposition: form-data; name="user_id"\r\n\r\n5\r\n'
        f'--{BOUNDARY}\r\nCONTENT-DISPOSITION: form-data; name="file"; filename="x.txt"\r\n\r\nX\r\n'
        f"--{BOUNDARY}--\r\n"
    ).encode()
    fields, files = receive(tmp_path / "job", data)
    assert (fields, files) == ({"user_id": "5"}, ["x.txt"])


def test_a_field_of_exactly_max_field_size_is_accepted(tmp_path):
    fields, _ = receive(tmp_path / "job", body(part('form-data; name="big"', b"a" * MAX_FIELD_SIZE)))
    assert fields == {"big": "a" * MAX_FIELD_SIZE}


@pytest.mark.parametrize("chunk_size", [None, 1000])
def test_a_field_over_max_field_size_is_refused(tmp_path, chunk_size):
    data = body(part('form-data; name="big"', b"a" * (MAX_FIELD_SIZE + 1)))
    chunks = None if chunk_size is None else [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
    with pytest.raises(BadRequest, match="big"):
        receive(tmp_path / "job", data, chunks)


def test_a_field_that_is_not_utf8_is_refused(tmp_path):
    with pytest.raises(BadRequest, match="UTF-8"):
        receive(tmp_path / "job", body(part('form-data; name="service"', b"caf\xe9")))


FILE_HEAD = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'


@pytest.mark.parametrize(
    "cut",
    [
        b"",
        f"--{BOUNDARY}".encode(),
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="user_id"\r\n'.encode(),
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="user_id"\r\n\r\n1\r\n'.encode(),
        f"{FILE_HEAD}half a fi".encode(),
        f"{FILE_HEAD}x\r\n--{BOUNDARY}\r\n".encode(),
        f"{FILE_HEAD}x\r\n--{BOUNDARY}-".encode(),
    ],
)
def test_a_body_cut_before_its_closing_boundary_is_refused_at_finish(tmp_path, cut):
    folder = tmp_path / "job"
    folder.mkdir()
    receiver = MultipartReceiver(CONTENT_TYPE, folder)
    receiver.feed(cut)
    with pytest.raises(BadRequest, match="closing boundary"):
        receiver.finish()


@pytest.mark.parametrize(
    "garbage",
    [
        b"this is not a multipart body at all",
        b'--not-the-boundary\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--not-the-boundary--\r\n',
        b"\x00\xff" * 100,
        b'{"user_id": 1, "service": "example"}',
    ],
)
def test_garbage_is_refused(tmp_path, garbage):
    with pytest.raises(BadRequest, match="malformed"):
        receive(tmp_path / "job", garbage)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/x-www-form-urlencoded",
        "text/plain; boundary=abc",
        "multipart/mixed; boundary=abc",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/form-data; charset=utf-8",
        "",
    ],
)
def test_wrong_content_type_or_missing_boundary_is_refused_at_construction(tmp_path, content_type):
    with pytest.raises(BadRequest) as raised:
        MultipartReceiver(content_type, tmp_path)
    assert raised.value.status == 400


def test_content_type_is_case_insensitive_and_boundary_may_be_quoted(tmp_path):
    fields, _ = receive(
        tmp_path / "job",
        body(part('form-data; name="a"', b"1")),
        content_type=f'Multipart/Form-Data; boundary="{BOUNDARY}"',
    )
    assert fields == {"a": "1"}


def test_a_part_without_content_disposition_is_refused(tmp_path):
    data = f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nhello\r\n--{BOUNDARY}--\r\n".encode()
    with pytest.raises(BadRequest, match="Content-Disposition"):
        receive(tmp_path / "job", data)


@pytest.mark.parametrize(
    ("filename", "saved"),
    [
        ("../escape.txt", "escape.txt"),
        ("../../../../../../tmp/escape.txt", "escape.txt"),
        ("/etc/cron.d/evil", "evil"),
        ("sub/dir/file.txt", "file.txt"),
        ("..", "file"),
        ("../", "file"),
        ("", "file"),
        ("new\nline.txt", "newline.txt"),
        ("../nul\x00/../x\x00y", "xy"),
        ("back\\slash.txt", "back\\slash.txt"),
        ("données_文件.txt", "données_文件.txt"),
    ],
)
def test_uploaded_file_names_land_inside_the_folder(tmp_path, filename, saved):
    folder = tmp_path / "jobs" / "job"
    folder.parent.mkdir()
    data = body(part(f'form-data; name="file"; filename="{filename}"', b"payload"))
    _, files = receive(folder, data)
    assert files == [saved]
    assert data_files(folder) == [saved]
    assert data_files(tmp_path) == [f"jobs/job/{saved}"]


def test_a_non_utf8_file_name_is_saved_under_a_replacement_name(tmp_path):
    data = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="'.encode()
        + b"caf\xe9.txt"
        + f'"\r\n\r\nX\r\n--{BOUNDARY}--\r\n'.encode()
    )
    _, files = receive(tmp_path / "job", data)
    assert files == ["caf\ufffd.txt"]
    assert data_files(tmp_path / "job") == ["caf\ufffd.txt"]


def test_a_file_name_that_is_too_long_is_refused(tmp_path):
    data = body(part(f'form-data; name="file"; filename="{"x" * 256}"', b"X"))
    with pytest.raises(BadRequest, match="too long"):
        receive(tmp_path / "job", data)
    assert data_files(tmp_path) == []


def test_a_file_that_cannot_be_written_is_a_bad_request(tmp_path):
    """A name that is already a folder inside the target cannot be opened: BadRequest, not an OSError."""
    (tmp_path / "job" / "taken").mkdir(parents=True)
    with pytest.raises(BadRequest, match="could not save file"):
        receive(tmp_path / "job", body(part('form-data; name="file"; filename="taken"', b"X")))


def test_empty_files_are_saved_empty(tmp_path):
    data = body(part('form-data; name="file"; filename="a"', b""), part('form-data; name="file"; filename="b"', b""))
    _, files = receive(tmp_path / "job", data)
    assert files == ["a", "b"]
    assert contents(tmp_path / "job") == {"a": b"", "b": b""}


def test_a_body_with_no_file_is_fine(tmp_path):
    fields, files = receive(tmp_path / "job", body(part('form-data; name="user_id"', b"1")))
    assert (fields, files) == ({"user_id": "1"}, [])
    assert data_files(tmp_path / "job") == []


def test_a_body_with_no_part_at_all_is_fine(tmp_path):
    assert receive(tmp_path / "job", f"--{BOUNDARY}--\r\n".encode()) == ({}, [])


def test_data_after_the_closing_boundary_is_ignored(tmp_path):
    data = body(part('form-data; name="file"; filename="a.txt"', b"A"))
    folder = tmp_path / "job"
    folder.mkdir()
    receiver = MultipartReceiver(CONTENT_TYPE, folder)
    receiver.feed(data)
    receiver.feed(b"epilogue that is not multipart at all\r\n--" + BOUNDARY.encode() + b"\r\n")
    assert receiver.finish() == ({}, ["a.txt"])
    assert contents(folder) == {"a.txt": b"A"}


def test_a_20_mb_file_fed_in_64_kib_chunks_is_written_intact(tmp_path):
    content = random.Random(7).randbytes(20 * 1024 * 1024)
    data = body(part('form-data; name="user_id"', b"1"), part('form-data; name="file"; filename="big.bin"', content))
    step = 64 * 1024
    fields, files = receive(tmp_path / "job", data, [data[i : i + step] for i in range(0, len(data), step)])
    assert (fields, files) == ({"user_id": "1"}, ["big.bin"])
    saved = (tmp_path / "job" / "big.bin").read_bytes()
    assert len(saved) == len(content)
    assert hashlib.sha256(saved).hexdigest() == hashlib.sha256(content).hexdigest()


# --- zip_folder --------------------------------------------------------------------------------------------


def entries(archive_path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(archive_path) as archive:
        assert archive.testzip() is None
        return {info.filename: archive.read(info) for info in archive.infolist()}


def modes(archive_path: Path) -> dict[str, int]:
    with zipfile.ZipFile(archive_path) as archive:
        return {info.filename: info.external_attr >> 16 for info in archive.infolist()}


def leftovers(folder: Path) -> list[str]:
    """Temporary files zip_folder may leave beside its destination."""
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


def test_zip_holds_nested_folders_empty_folders_and_empty_files(tmp_path):
    folder = tmp_path / "job"
    (folder / "a" / "b").mkdir(parents=True)
    (folder / "empty_dir").mkdir()
    (folder / "a" / "b" / "deep.txt").write_text("deep")
    (folder / "a" / "mid.txt").write_text("mid")
    (folder / "top.txt").write_text("top")
    (folder / "empty.txt").touch()
    zip_folder(folder, tmp_path / "out.zip")
    assert entries(tmp_path / "out.zip") == {
        "a/": b"",
        "a/b/": b"",
        "a/b/deep.txt": b"deep",
        "a/mid.txt": b"mid",
        "empty.txt": b"",
        "empty_dir/": b"",
        "top.txt": b"top",
    }
    assert stat.S_ISDIR(modes(tmp_path / "out.zip")["empty_dir/"])


def test_zip_of_an_empty_folder_is_a_valid_empty_archive(tmp_path):
    (tmp_path / "job").mkdir()
    zip_folder(tmp_path / "job", tmp_path / "out.zip")
    assert entries(tmp_path / "out.zip") == {}


def test_zip_does_not_contain_itself_or_its_temporary_file(tmp_path):
    """The destination beside the folder: only the folder's own files are in the archive."""
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "result.txt").write_text("r")
    zip_folder(folder, tmp_path / "output.zip")
    assert list(entries(tmp_path / "output.zip")) == ["result.txt"]
    assert data_files(folder) == ["result.txt"]


def test_a_link_to_a_file_outside_is_stored_as_a_link_not_its_content(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "passwd").symlink_to("/etc/passwd")
    zip_folder(folder, tmp_path / "out.zip")
    stored = entries(tmp_path / "out.zip")
    assert stored == {"passwd": b"/etc/passwd"}
    assert stat.S_ISLNK(modes(tmp_path / "out.zip")["passwd"])
    secret = Path("/etc/passwd").read_bytes()
    assert secret not in (tmp_path / "out.zip").read_bytes()
    assert all(secret not in content for content in stored.values())


def test_a_link_to_a_folder_outside_is_not_followed(tmp_path):
    outside = tmp_path / "outside"
    (outside / "inner").mkdir(parents=True)
    (outside / "secret.txt").write_text("TOP-SECRET-MARKER")
    (outside / "inner" / "more.txt").write_text("MORE-SECRET-MARKER")
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "link").symlink_to(outside)
    (folder / "dangling").symlink_to(tmp_path / "nowhere")
    zip_folder(folder, tmp_path / "out.zip")
    stored = entries(tmp_path / "out.zip")
    assert stored == {"dangling": str(tmp_path / "nowhere").encode(), "link": str(outside).encode()}
    assert stat.S_ISLNK(modes(tmp_path / "out.zip")["link"])
    raw = (tmp_path / "out.zip").read_bytes()
    assert b"SECRET-MARKER" not in raw
    assert b"secret.txt" not in raw and b"more.txt" not in raw


@pytest.mark.parametrize("name", ["v1..2.txt", "..hidden", "trailing..", "a..b/c..d.txt"])
def test_names_containing_two_dots_are_zipped(tmp_path, name):
    """The original refused any entry whose path contained `..`; these are plain names."""
    folder = tmp_path / "job"
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("ok")
    zip_folder(folder, tmp_path / "out.zip")
    assert entries(tmp_path / "out.zip")[name] == b"ok"


def test_a_fifo_is_skipped_without_blocking(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    os.mkfifo(folder / "pipe")
    (folder / "real.txt").write_text("real")
    # In a thread, so that a zip blocked on opening the fifo fails the test instead of hanging the run.
    worker = threading.Thread(target=zip_folder, args=(folder, tmp_path / "out.zip"), daemon=True)
    worker.start()
    worker.join(WAIT_TIMEOUT)
    assert not worker.is_alive(), "zip_folder blocked on a fifo"
    assert entries(tmp_path / "out.zip") == {"real.txt": b"real"}


def test_unix_permission_bits_are_kept(tmp_path):
    folder = tmp_path / "job"
    (folder / "private").mkdir(parents=True)
    (folder / "run.sh").write_text("exit 0\n")
    (folder / "secret.key").write_text("k")
    (folder / "run.sh").chmod(0o755)
    (folder / "secret.key").chmod(0o600)
    (folder / "private").chmod(0o700)
    zip_folder(folder, tmp_path / "out.zip")
    stored = modes(tmp_path / "out.zip")
    assert stat.S_IMODE(stored["run.sh"]) == 0o755
    assert stat.S_IMODE(stored["secret.key"]) == 0o600
    assert stat.S_IMODE(stored["private/"]) == 0o700
    assert stat.S_ISREG(stored["run.sh"]) and stat.S_ISDIR(stored["private/"])


def test_setuid_setgid_and_sticky_bits_are_not_stored(tmp_path):
    folder = tmp_path / "job"
    (folder / "shared").mkdir(parents=True)
    (folder / "tool").write_text("#!/bin/sh\n")
    (folder / "tool").chmod(0o6755)
    (folder / "shared").chmod(0o1777)
    zip_folder(folder, tmp_path / "out.zip")
    stored = modes(tmp_path / "out.zip")
    assert (stat.S_IMODE(stored["tool"]), stat.S_IMODE(stored["shared/"])) == (0o755, 0o777)


@pytest.mark.parametrize(
    ("name", "stored"),
    [("..\\..\\evil.txt", ".._.._evil.txt"), ("a\\b.txt", "a_b.txt"), ("...", "..."), ("..a", "..a")],
)
def test_names_are_stored_as_plain_relative_paths(tmp_path, name, stored):
    folder = tmp_path / "job"
    (folder / "sub").mkdir(parents=True)
    (folder / name).write_text("top")
    (folder / "sub" / name).write_text("deep")
    zip_folder(folder, tmp_path / "out.zip")
    assert entries(tmp_path / "out.zip") == {stored: b"top", "sub/": b"", f"sub/{stored}": b"deep"}


def test_a_rewritten_name_that_is_taken_gets_a_number(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "a\\b").write_text("backslash")
    (folder / "a_b").write_text("underscore")
    zip_folder(folder, tmp_path / "out.zip")
    assert entries(tmp_path / "out.zip") == {"a_b": b"backslash", "a_b~2": b"underscore"}


def test_a_stopped_zip_leaves_nothing_and_keeps_the_previous_dest(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    (tmp_path / "out.zip").write_bytes(b"previous")
    stop = threading.Event()
    stop.set()
    with pytest.raises(ZipStopped):
        zip_folder(folder, tmp_path / "out.zip", stop)
    assert (tmp_path / "out.zip").read_bytes() == b"previous"
    assert leftovers(tmp_path) == []


def test_extracting_the_zip_restores_the_executable_bit(tmp_path):
    """Unix attributes are marked as such (create_system 3), so tools that honour them see the mode."""
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "run.sh").write_text("exit 0\n")
    (folder / "run.sh").chmod(0o750)
    zip_folder(folder, tmp_path / "out.zip")
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        assert archive.getinfo("run.sh").create_system == 3


def test_dest_is_written_atomically_and_no_temporary_file_is_left(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    dest_dir = tmp_path / "results"
    dest_dir.mkdir()
    (dest_dir / "out.zip").write_bytes(b"an older, broken archive")
    zip_folder(folder, dest_dir / "out.zip")
    assert entries(dest_dir / "out.zip") == {"a.txt": b"a"}
    assert sorted(path.name for path in dest_dir.iterdir()) == ["out.zip"]


def test_zipping_a_missing_folder_raises_and_leaves_nothing(tmp_path):
    dest_dir = tmp_path / "results"
    dest_dir.mkdir()
    with pytest.raises(FileNotFoundError):
        zip_folder(tmp_path / "missing", dest_dir / "out.zip")
    assert list(dest_dir.iterdir()) == []


def test_a_failed_zip_keeps_the_previous_dest(tmp_path):
    dest_dir = tmp_path / "results"
    dest_dir.mkdir()
    (dest_dir / "out.zip").write_bytes(b"previous")
    with pytest.raises(FileNotFoundError):
        zip_folder(tmp_path / "missing", dest_dir / "out.zip")
    assert (dest_dir / "out.zip").read_bytes() == b"previous"
    assert leftovers(dest_dir) == []


def test_zipping_into_a_missing_folder_raises(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    with pytest.raises(FileNotFoundError):
        zip_folder(folder, tmp_path / "missing" / "out.zip")
    assert data_files(tmp_path) == ["job/a.txt"]


def test_files_older_than_1980_still_zip(tmp_path):
    folder = tmp_path / "job"
    (folder / "old_dir").mkdir(parents=True)
    (folder / "old_dir" / "old.txt").write_text("old")
    os.utime(folder / "old_dir" / "old.txt", (0, 0))
    os.utime(folder / "old_dir", (0, 0))
    zip_folder(folder, tmp_path / "out.zip")
    assert entries(tmp_path / "out.zip") == {"old_dir/": b"", "old_dir/old.txt": b"old"}
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        assert archive.getinfo("old_dir/old.txt").date_time == (1980, 1, 1, 0, 0, 0)


def test_new_names_are_unique_hex_and_sort_in_the_order_they_were_made():
    """Job folders are named so: the database's unique index of them then grows at one end."""
    before = time.time_ns()
    names = [new_name() for _ in range(1000)]
    after = time.time_ns()
    assert all(re.fullmatch(r"[0-9a-f]{32}", name) for name in names)
    assert len(set(names)) == len(names)
    made_at = [int(name[:16], 16) for name in names]  # the time first
    assert made_at == sorted(made_at) and before <= made_at[0] and made_at[-1] <= after
