"""Remote files: where each downloadable file lives, its checksum, and download with
verification.

Files are looked up in a data directory (``root/<subdir>`` first, then ``root``),
downloaded from their mirrors in order when missing (unless ``LVMBENCH_OFFLINE=1`` or
``download=False``), and verified against :data:`CHECKSUMS` before every use; a verified
digest is cached in a ``<file>.verified`` sidecar keyed on the file's size and mtime.
The sidecar spares the training and measurement jobs a rehash; ``lvmbench prepare``
verifies the content itself (:func:`rechecked`), so a file corrupted in place with its
size and mtime kept is caught before any run uses it. A file that cannot be read gets
advice that fits the cause (:func:`unreadable`).
"""

from __future__ import annotations

import contextvars
import gzip
import hashlib
import http.client
import json
import os
import pathlib
import urllib.request
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from tqdm.auto import tqdm

from lvmbench.errors import LvmbenchError
from lvmbench.io import atomic_write

_CHUNK = 1 << 20


class DatasetError(LvmbenchError):
    """A user-facing, one-line error about a dataset (unknown name, missing or corrupt file...)."""


#: Expected checksum of each downloadable file, keyed by its canonical name. MNIST and
#: Larochelle's binarized MNIST: sha256 (of the uncompressed ``.amat`` content for the
#: latter); Omniglot's chardata.mat: git blob sha1 (no other checksum is published).
CHECKSUMS: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "binarized_mnist_train.amat": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    "binarized_mnist_valid.amat": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    "binarized_mnist_test.amat": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
    "chardata.mat": "016a3536ffe5e1d38e42563a18d7a78bfaf643ec",
}

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
LAROCHELLE_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
OMNIGLOT_URL = "https://github.com/yburda/iwae/raw/master/datasets/OMNIGLOT/"


@dataclass(frozen=True)
class RemoteFile:
    """A downloadable file, found in ``root`` or ``root/subdir`` and downloaded into the latter.

    ``algorithm`` is "sha256" or "git-sha1" (``git hash-object``). With ``gz_ok`` a
    gzip-compressed copy ``name + ".gz"`` is accepted too; its checksum is that of
    the uncompressed content.
    """

    name: str
    subdir: str
    mirrors: tuple[str, ...]
    algorithm: str = "sha256"
    gz_ok: bool = False

    @property
    def urls(self) -> list[str]:
        return [mirror + self.name for mirror in self.mirrors]

    @property
    def expected(self) -> str:
        return CHECKSUMS[self.name]


class _MirrorError(Exception):
    """A mirror served a file with the wrong checksum."""


def _offline() -> bool:
    return os.environ.get("LVMBENCH_OFFLINE", "").strip().lower() in {"1", "true", "yes"}


def _digest(path: pathlib.Path, algorithm: str, decompress: bool) -> str:
    """Checksum of a file's content (of its gunzipped content with ``decompress``)."""
    if algorithm == "git-sha1":
        hasher = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    else:
        hasher = hashlib.new(algorithm)
    with (gzip.open if decompress else open)(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def _sidecar(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + ".verified")


def _stamp(path: pathlib.Path, algorithm: str) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "algorithm": algorithm}


def _record_digest(path: pathlib.Path, algorithm: str, digest: str) -> None:
    """Cache a digest in ``<file>.verified`` (skipped where the directory is read-only)."""
    try:
        _sidecar(path).write_text(json.dumps({**_stamp(path, algorithm), "digest": digest}))
    except OSError:
        pass


_RECHECK = contextvars.ContextVar("recheck", default=False)


@contextmanager
def rechecked() -> Iterator[None]:
    """Within this block every file's content is hashed again, whatever its sidecar says
    (``lvmbench prepare``: a file may be corrupted in place with its size and mtime kept)."""
    token = _RECHECK.set(True)
    try:
        yield
    finally:
        _RECHECK.reset(token)


def _cached_digest(path: pathlib.Path, algorithm: str, decompress: bool) -> str:
    """The file's digest, from its sidecar when size and mtime still match (outside
    :func:`rechecked`), else computed."""
    stamp = _stamp(path, algorithm)
    try:
        cached = json.loads(_sidecar(path).read_text())
        if not _RECHECK.get() and {k: cached[k] for k in stamp} == stamp:
            return cached["digest"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = _digest(path, algorithm, decompress)
    _record_digest(path, algorithm, digest)
    return digest


def unreadable(path: pathlib.Path, err: Exception, expected: str = "") -> DatasetError:
    """The one-line error for a data file that cannot be read, with advice that fits the
    cause: permissions are fixed by making the file readable, corruption by a new copy
    (``expected`` names the checksum it must have)."""
    if isinstance(err, PermissionError):
        return DatasetError(f"{path}: cannot read it (permission denied); make it readable (chmod a+r) or set "
                            f"data_dir / $LVMBENCH_DATA to a directory holding a readable copy")
    if isinstance(err, IsADirectoryError):
        return DatasetError(f"{path}: is a directory, not a data file; remove it or move it aside")
    if isinstance(err, OSError) and not isinstance(err, gzip.BadGzipFile) and err.errno is not None:
        return DatasetError(f"{path}: cannot read it ({err.strerror})")
    return DatasetError(f"{path}: cannot read it, it is corrupt or truncated ({type(err).__name__}: "
                        f"{' '.join(str(err).split()) or 'no details'}){expected and '; expected ' + expected}; "
                        f"delete it to download it again")


@contextmanager
def reading(path: pathlib.Path, expected: str = "") -> Iterator[None]:
    """Turn the errors of reading a data file into one line (:func:`unreadable`)."""
    try:
        yield
    except (OSError, EOFError, zlib.error, ValueError) as err:
        raise unreadable(path, err, expected) from None


def _verify(path: pathlib.Path, remote: RemoteFile) -> None:
    what = f"{remote.algorithm} of the uncompressed content" if path.name != remote.name else remote.algorithm
    with reading(path, f"{what} {remote.expected}"):
        found = _cached_digest(path, remote.algorithm, decompress=path.name != remote.name)
    if found != remote.expected:
        raise DatasetError(
            f"{path}: checksum mismatch (corrupt or truncated?), expected {what} {remote.expected}, "
            f"found {found}; delete it to download it again"
        )


def _download_from(url: str, out, desc: str) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "lvmbench"})
    with urllib.request.urlopen(request, timeout=60) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=False) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))


def _download(remote: RemoteFile, directory: pathlib.Path) -> pathlib.Path:
    """Download from the mirrors in order into a temporary file, verify it, then move it into
    place (:func:`lvmbench.io.atomic_write`): a failed or wrong download leaves no file."""
    target = directory / remote.name
    errors = []

    def fetch_and_verify(url: str, tmp: pathlib.Path) -> None:
        with open(tmp, "wb") as out:
            _download_from(url, out, remote.name)
        found = _digest(tmp, remote.algorithm, decompress=False)
        if found != remote.expected:
            raise _MirrorError(f"checksum mismatch, expected {remote.expected}, found {found}")

    for url in remote.urls:
        try:
            atomic_write(target, lambda tmp: fetch_and_verify(url, tmp))
        except (OSError, http.client.HTTPException, _MirrorError) as e:
            errors.append(f"{url} ({type(e).__name__}: {e})")
            continue
        _record_digest(target, remote.algorithm, remote.expected)
        return target
    raise DatasetError(f"could not download {remote.name}; tried: " + "; ".join(errors))


def fetch(remote: RemoteFile, root: pathlib.Path, download: bool) -> pathlib.Path:
    """Path of a verified local copy of ``remote``, downloading it if allowed and missing."""
    names = [remote.name, remote.name + ".gz"] if remote.gz_ok else [remote.name]
    directories = [root / remote.subdir, root]
    for directory in directories:
        for name in names:
            if (directory / name).is_file():
                path = directory / name
                _verify(path, remote)
                return path
    if not download or _offline():
        accepted = " or ".join(names)
        raise DatasetError(
            f"{accepted} not found in {directories[0]} or {root} (downloads are off: "
            f"LVMBENCH_OFFLINE=1 or download=False); get it from {' or '.join(remote.urls)} "
            f"and put it in {directories[0]} ({remote.algorithm} {remote.expected})"
        )
    return _download(remote, directories[0])
