"""Function code packages: validated, deterministic zips addressed by SHA-256.

Theory of operation
-------------------
A function's code reaches the mesh as a zip. Whatever zip the user gives (or
whatever directory the SDK reads, see ``meshfaas.client.package_code``), it is
rebuilt here into a *canonical* zip: entries sorted by name, every timestamp
1980-01-01, permissions 0644 (0755 when the source was executable), no
directory entries, deflate at a fixed level. The same files then give the same
bytes and so the same SHA-256, which is the package's address in the blob
store and in the replicated state (``CodeRef``).

Checks, all before anything is extracted anywhere (zip-slip and zip bombs):

* the zip itself at most ``MAX_ZIP_BYTES`` (50 MB), at most ``MAX_ENTRIES``;
* no entry that would land outside its folder: absolute names, ``..`` or
  ``.`` components, empty components, backslashes, drive letters, NUL;
* no symbolic links (a Unix mode of ``S_IFLNK``), no special files;
* no duplicate names; no encrypted entries;
* at most ``MAX_UNZIPPED_BYTES`` (250 MB) once unpacked, counted while
  reading, never trusting the sizes the zip declares.

Everything here works on bytes in memory (``zipfile`` over ``io.BytesIO``),
so it is pure and deterministic. Failures raise :class:`PackageError` (the
caller's misuse); the node turns it into a ``BadRequest`` answer.
"""

from __future__ import annotations

import hashlib
import io
import stat
import zipfile
from collections.abc import Iterable

import attrs

MAX_ZIP_BYTES = 50 * 1024 * 1024
MAX_UNZIPPED_BYTES = 250 * 1024 * 1024
MAX_ENTRIES = 10_000
FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)
COMPRESS_LEVEL = 6


class PackageError(ValueError):
    """The code package is refused; the message says why."""


@attrs.frozen(kw_only=True)
class Package:
    """A canonical zip and its address."""

    zip_bytes: bytes
    sha256: str
    size_bytes: int


@attrs.frozen(kw_only=True)
class Entry:
    """One file to package: a relative POSIX path, its bytes, whether executable."""

    path: str
    data: bytes
    executable: bool = False


def check_entry_name(name: str) -> str | None:
    """Why ``name`` may not be a zip entry (it would escape its folder), or None."""
    if not name or "\x00" in name or "\\" in name:
        return f"entry {name!r}: empty, or contains NUL or a backslash"
    if name.startswith("/"):
        return f"entry {name!r}: absolute path"
    parts = name.split("/")
    if ":" in parts[0]:
        return f"entry {name!r}: drive letter or scheme"
    if any(part in ("", ".", "..") for part in parts):
        return f"entry {name!r}: empty, '.' or '..' component"
    return None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_zip(entries: Iterable[Entry]) -> Package:
    """The canonical zip of ``entries`` (validated, sorted, fixed metadata)."""
    ordered = sorted(entries, key=lambda e: e.path)
    _check_entries(ordered)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED,
                         compresslevel=COMPRESS_LEVEL) as archive:
        for entry in ordered:
            archive.writestr(_zip_info(entry), entry.data)
    data = buffer.getvalue()
    if len(data) > MAX_ZIP_BYTES:
        raise PackageError(f"package is {len(data)} bytes, over the {MAX_ZIP_BYTES}-byte limit")
    return Package(zip_bytes=data, sha256=sha256_hex(data), size_bytes=len(data))


def _check_entries(ordered: list[Entry]) -> None:
    if not ordered:
        raise PackageError("package has no files")
    if len(ordered) > MAX_ENTRIES:
        raise PackageError(f"package has over {MAX_ENTRIES} files")
    total = 0
    previous = None
    for entry in ordered:
        problem = check_entry_name(entry.path)
        if problem is not None:
            raise PackageError(problem)
        if entry.path == previous:
            raise PackageError(f"entry {entry.path!r} appears twice")
        previous = entry.path
        total += len(entry.data)
        if total > MAX_UNZIPPED_BYTES:
            raise PackageError(f"package unpacks to over {MAX_UNZIPPED_BYTES} bytes")


def _zip_info(entry: Entry) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(entry.path, date_time=FIXED_DATE_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3  # Unix, so external_attr carries the mode
    mode = 0o755 if entry.executable else 0o644
    info.external_attr = (stat.S_IFREG | mode) << 16
    return info


def normalize_zip(data: bytes) -> Package:
    """Validate a user's zip and rebuild it canonically."""
    if len(data) > MAX_ZIP_BYTES:
        raise PackageError(f"zip is {len(data)} bytes, over the {MAX_ZIP_BYTES}-byte limit")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = _read_entries(archive)
    except PackageError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError,
            EOFError, OSError, ValueError) as exc:
        raise PackageError(f"not a readable zip: {exc}") from None
    return build_zip(entries)


def _read_entries(archive: zipfile.ZipFile) -> list[Entry]:
    infos = archive.infolist()
    if len(infos) > MAX_ENTRIES:
        raise PackageError(f"zip has over {MAX_ENTRIES} entries")
    entries: list[Entry] = []
    budget = MAX_UNZIPPED_BYTES
    for info in infos:
        entry = _read_entry(archive, info, budget)
        if entry is not None:
            budget -= len(entry.data)
            entries.append(entry)
    return entries


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int) -> Entry | None:
    problem = check_entry_name(info.filename.rstrip("/") if info.is_dir() else info.filename)
    if problem is not None:
        raise PackageError(problem)
    mode = info.external_attr >> 16 if info.create_system == 3 else 0
    if stat.S_ISLNK(mode):
        raise PackageError(f"entry {info.filename!r}: symbolic links are refused")
    if info.is_dir() or stat.S_ISDIR(mode):
        return None
    if mode and not stat.S_ISREG(mode):
        raise PackageError(f"entry {info.filename!r}: not a regular file")
    if info.flag_bits & 0x1:
        raise PackageError(f"entry {info.filename!r}: encrypted entries are refused")
    with archive.open(info) as stream:
        data = stream.read(budget + 1)
    if len(data) > budget:
        raise PackageError(f"zip unpacks to over {MAX_UNZIPPED_BYTES} bytes")
    return Entry(path=info.filename, data=data, executable=bool(mode & 0o111))
