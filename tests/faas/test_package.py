"""Code packages: canonical zips, zip-slip and size limits."""

from __future__ import annotations

import io
import stat
import warnings
import zipfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshfaas.core import faas_package as pkg
from meshfaas.core.faas_package import Entry, PackageError, build_zip, normalize_zip


def raw_zip(*members: tuple[str, bytes, int]) -> bytes:
    """A zip with exactly these (name, data, unix mode) members, nothing checked."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, data, mode in members:
                info = zipfile.ZipInfo(name, date_time=(2020, 5, 6, 7, 8, 9))
                info.create_system = 3
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = mode << 16
                archive.writestr(info, data)
    return buffer.getvalue()


REG = stat.S_IFREG | 0o644


@pytest.mark.parametrize(
    ("name", "ok"),
    [("app.py", True), ("pkg/mod.py", True), ("a/b/c.txt", True), ("../evil.py", False),
     ("a/../../evil.py", False), ("a/..", False), ("/etc/passwd", False), ("C:/x.py", False),
     ("a\\..\\b", False), ("a//b", False), ("./a", False), ("", False), ("a\x00b", False)],
)
def test_check_entry_name_table(name: str, ok: bool) -> None:
    assert (pkg.check_entry_name(name) is None) is ok


@pytest.mark.parametrize("evil", ["../evil.py", "/abs.py", "ok/../../evil.py", "C:/x.py", "a\\b.py"])
def test_normalize_refuses_zip_slip(evil: str) -> None:
    with pytest.raises(PackageError):
        normalize_zip(raw_zip(("app.py", b"x", REG), (evil, b"boom", REG)))


def test_normalize_refuses_symlinks_and_duplicates() -> None:
    with pytest.raises(PackageError, match="symbolic"):
        normalize_zip(raw_zip(("link", b"/etc/passwd", stat.S_IFLNK | 0o777)))
    with pytest.raises(PackageError, match="twice"):
        normalize_zip(raw_zip(("a.py", b"1", REG), ("a.py", b"2", REG)))
    with pytest.raises(PackageError, match="regular"):
        normalize_zip(raw_zip(("fifo", b"", stat.S_IFIFO | 0o644)))


@pytest.mark.parametrize("data", [b"", b"not a zip", b"PK\x03\x04garbage", raw_zip()[:-5]])
def test_normalize_refuses_garbage(data: bytes) -> None:
    with pytest.raises(PackageError):
        normalize_zip(data)


def test_normalize_canonicalizes() -> None:
    original = raw_zip(("b.py", b"B", REG), ("dir/", b"", stat.S_IFDIR | 0o755),
                       ("a.py", b"A", stat.S_IFREG | 0o755), ("dir/c.py", b"C", REG))
    package = normalize_zip(original)
    with zipfile.ZipFile(io.BytesIO(package.zip_bytes)) as archive:
        infos = archive.infolist()
        assert [i.filename for i in infos] == ["a.py", "b.py", "dir/c.py"]
        assert {i.date_time for i in infos} == {pkg.FIXED_DATE_TIME}
        assert (infos[0].external_attr >> 16) & 0o777 == 0o755
        assert (infos[1].external_attr >> 16) & 0o777 == 0o644
        assert archive.read("dir/c.py") == b"C"
    assert normalize_zip(package.zip_bytes) == package
    assert package.sha256 == pkg.sha256_hex(package.zip_bytes)
    assert package.size_bytes == len(package.zip_bytes)


def test_size_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pkg, "MAX_UNZIPPED_BYTES", 1000)
    bomb = raw_zip(("zeros", b"\0" * 1001, REG))
    assert len(bomb) < 1000
    with pytest.raises(PackageError, match="unpacks"):
        normalize_zip(bomb)
    with pytest.raises(PackageError, match="unpacks"):
        build_zip([Entry(path="a", data=b"x" * 600), Entry(path="b", data=b"x" * 600)])
    monkeypatch.setattr(pkg, "MAX_ZIP_BYTES", 100)
    with pytest.raises(PackageError, match="limit"):
        normalize_zip(b"x" * 101)
    with pytest.raises(PackageError, match="limit"):
        build_zip([Entry(path="r", data=bytes(range(256)) * 3)])


def test_entry_count_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pkg, "MAX_ENTRIES", 2)
    with pytest.raises(PackageError, match="entries"):
        normalize_zip(raw_zip(*[(f"f{i}", b"", REG) for i in range(3)]))
    with pytest.raises(PackageError):
        build_zip([])


files = st.dictionaries(
    st.from_regex(r"[a-z]{1,6}(/[a-z]{1,6}){0,2}\.py", fullmatch=True),
    st.binary(max_size=64), min_size=1, max_size=6,
)


@given(files, st.randoms(use_true_random=False))
def test_build_is_deterministic_whatever_the_order(contents: dict[str, bytes], rnd: object) -> None:
    entries = [Entry(path=p, data=d) for p, d in contents.items()]
    shuffled = list(entries)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    first = build_zip(entries)
    assert build_zip(shuffled) == first
    assert normalize_zip(first.zip_bytes) == first
