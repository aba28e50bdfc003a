"""Where cache entries live, and the seal that makes loading them safe.

An entry is a pickle, and loading a pickle runs code, so nothing is loaded
that this user did not write:

- every entry carries an HMAC-SHA256 of its key, its creation time and its
  payload, made with a secret key that lives outside the store
  (``_secret_key``: a file private to the user, never in a remote store); an
  entry that fails the check (tampered, truncated, written with another key) is
  never unpickled;
- a local store is a directory created private to the user (mode 0700); an
  existing one that other users can write to is refused.

Entries are written whole or not at all: a local entry goes to a temporary
file in its folder and is moved into place with ``os.replace``; a remote entry
is one ``pipe_file`` (a single object upload). Concurrent runs sharing a store
therefore see an entry completely or not at all. (No ``fsync``: an entry cut
short by a machine crash fails its HMAC and is recomputed.)

Layout, under the store's root::

    CACHEDIR.TAG                               (tells backup tools to skip it)
    <task name>-<code digest>/<key digest>.entry
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import struct
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final, Protocol, final

__all__ = ["ENTRY_SUFFIX", "_Sealer", "_Store", "_UnsafeLocation", "default_location", "open_store"]

ENTRY_SUFFIX: Final = ".entry"
_MAGIC: Final = b"DGLC1"
_HEADER: Final = struct.Struct("<5s32sd")  # magic, HMAC, creation time (time.time())
_KEY_BYTES: Final = 32
# Payloads up to this size are MACed in one call on a joined copy; larger ones
# are streamed (no copy of a large result).
_ONE_SHOT: Final = 1 << 16
_TAG: Final = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by daglite.\n"
)
KEY_FILE_ENV: Final = "DAGLITE_CACHE_KEY_FILE"
CACHE_DIR_ENV: Final = "DAGLITE_CACHE_DIR"


class _UnsafeLocation(PermissionError):
    """A cache location other users could write to, or a key file they could read."""


# -- the seal ---------------------------------------------------------------------------


@final
class _Sealer:
    """Seals entries with, and checks them against, one secret key."""

    __slots__ = ("_base", "_secret")

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._base = hmac.new(secret, _MAGIC, hashlib.sha256)

    def _mac(self, key: bytes, created: float, payload: bytes | memoryview) -> bytes:
        head = key + struct.pack("<d", created)
        if len(payload) <= _ONE_SHOT:  # one C call, no HMAC object
            return hmac.digest(self._secret, _MAGIC + head + payload, "sha256")
        mac = self._base.copy()
        mac.update(head)
        mac.update(payload)
        return mac.digest()

    def seal(self, key: bytes, payload: bytes, created: float) -> list[bytes]:
        """The entry's bytes for ``payload`` stored under ``key``, as parts to write."""
        header = _HEADER.pack(_MAGIC, self._mac(key, created, payload), created)
        return [header, payload]

    def open(self, key: bytes, data: bytes) -> tuple[float, memoryview] | None:
        """(creation time, payload) of a sound entry; None when the check fails."""
        if len(data) < _HEADER.size:
            return None
        magic, mac, created = _HEADER.unpack_from(data)
        payload = memoryview(data)[_HEADER.size :]
        if magic != _MAGIC or not hmac.compare_digest(mac, self._mac(key, created, payload)):
            return None
        return created, payload


def _key_file() -> Path:
    """Where the secret key lives: ``$DAGLITE_CACHE_KEY_FILE``, else the user's config dir."""
    configured = os.environ.get(KEY_FILE_ENV)
    if configured:
        return Path(configured)
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "daglite" / "cache-key"


def _secret_key() -> bytes:
    """The user's secret cache key, made on first use (mode 0600).

    Raises:
        PermissionError: When the key file can be read or written by other users.
    """
    path = _key_file()
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".cache-key-")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(_KEY_BYTES))
        try:
            os.link(tmp, path)  # never replaces a key another process made meanwhile
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    with path.open("rb") as f:
        if os.name == "posix":
            mode = os.fstat(f.fileno()).st_mode
            if mode & 0o077:
                raise _UnsafeLocation(
                    f"the cache key file {str(path)!r} is accessible to other users "
                    f"(mode {stat.S_IMODE(mode):o}); run `chmod 600` on it, or delete it to "
                    "make a new key (existing cache entries are then recomputed)"
                )
        key = f.read()
    if len(key) < _KEY_BYTES:
        raise _UnsafeLocation(f"the cache key file {str(path)!r} is too short; delete it")
    return key


# -- stores -------------------------------------------------------------------------------


class _Store(Protocol):
    """Reads and writes entries by path relative to the store's root."""

    location: str

    def read(self, rel: str) -> bytes | None:
        """The entry's bytes; None when there is none."""
        ...

    def write(self, rel: str, parts: Sequence[bytes]) -> None:
        """Write an entry, whole or not at all (raises ``OSError``)."""
        ...

    def entries(self) -> Iterator[tuple[str, int]]:
        """Every entry: (relative path, size in bytes)."""
        ...

    def remove(self, rel: str) -> None:
        """Delete an entry (gone already is fine)."""
        ...


@final
class _LocalStore:
    """A directory on this machine, private to the user."""

    __slots__ = ("_made", "_prefix", "location", "root")

    def __init__(self, root: Path, create: bool = True) -> None:
        self.root = root
        self.location = str(root)
        self._prefix = os.path.join(self.location, "")  # root and separator
        self._made: set[str] = set()
        if root.exists():
            _check_private(root)
        elif not create:
            raise FileNotFoundError(f"there is no cache at {str(root)!r}")
        else:
            root.mkdir(parents=True, mode=0o700)
            os.chmod(root, 0o700)  # whatever the umask
        tag = root / "CACHEDIR.TAG"
        if not tag.exists():
            try:
                tag.write_text(_TAG, encoding="ascii")
            except OSError:
                pass  # a read-only store can still be read

    def read(self, rel: str) -> bytes | None:
        """The entry's bytes; None when there is none."""
        try:
            with open(self._prefix + rel, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write(self, rel: str, parts: Sequence[bytes]) -> None:
        """Write to a temporary file beside the entry, then move it into place."""
        folder, _, _ = rel.rpartition("/")
        directory = os.path.join(self.location, folder)
        if folder not in self._made:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            self._made.add(folder)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                for part in parts:
                    f.write(part)
            os.replace(tmp, os.path.join(self.location, rel))
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def entries(self) -> Iterator[tuple[str, int]]:
        """Every entry: (relative path, size in bytes)."""
        for path in sorted(self.root.glob(f"*/*{ENTRY_SUFFIX}")):
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            yield path.relative_to(self.root).as_posix(), size

    def remove(self, rel: str) -> None:
        """Delete an entry (gone already is fine)."""
        (self.root / rel).unlink(missing_ok=True)


def _check_private(root: Path) -> None:
    """Refuse a directory other users can write to (they could plant entries)."""
    st = root.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"the cache location {str(root)!r} is not a directory")
    if os.name != "posix":
        return
    if st.st_uid != os.getuid():
        raise _UnsafeLocation(
            f"the cache directory {str(root)!r} belongs to another user (uid {st.st_uid}); "
            "use a directory of your own"
        )
    if st.st_mode & 0o022:
        raise _UnsafeLocation(
            f"the cache directory {str(root)!r} is writable by other users "
            f"(mode {stat.S_IMODE(st.st_mode):o}); run `chmod 700` on it or use another directory"
        )


@final
class _FsspecStore:
    """A store behind an fsspec URL (``s3://``, ``gs://``, ``memory://``...)."""

    __slots__ = ("_made", "fs", "location", "root")

    def __init__(self, fs: Any, root: str, location: str, create: bool = True) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.location = location
        self._made: set[str] = set()
        if create:
            fs.makedirs(self.root, exist_ok=True)
        elif not fs.exists(self.root):
            raise FileNotFoundError(f"there is no cache at {location!r}")

    def read(self, rel: str) -> bytes | None:
        """The entry's bytes; None when there is none."""
        try:
            return bytes(self.fs.cat_file(f"{self.root}/{rel}"))
        except FileNotFoundError:
            return None

    def write(self, rel: str, parts: Sequence[bytes]) -> None:
        """One upload of the whole entry: object stores make it visible all at once."""
        folder = f"{self.root}/{rel.rpartition('/')[0]}"
        if folder not in self._made:
            self.fs.makedirs(folder, exist_ok=True)
            self._made.add(folder)
        self.fs.pipe_file(f"{self.root}/{rel}", b"".join(parts))

    def entries(self) -> Iterator[tuple[str, int]]:
        """Every entry: (relative path, size in bytes)."""
        found = self.fs.find(self.root, detail=True)
        prefix = len(self.fs._strip_protocol(self.root).rstrip("/")) + 1
        for path, info in sorted(found.items()):
            rel = self.fs._strip_protocol(path)[prefix:]
            if rel.endswith(ENTRY_SUFFIX) and rel.count("/") == 1:
                yield rel, int(info.get("size") or 0)

    def remove(self, rel: str) -> None:
        """Delete an entry (gone already is fine)."""
        try:
            self.fs.rm_file(f"{self.root}/{rel}")
        except FileNotFoundError:
            pass


def open_store(location: str | os.PathLike[str], create: bool = True) -> _Store:
    """The store at a local path or an fsspec URL (made if missing, with ``create``).

    Raises:
        PermissionError: For a local directory other users can write to.
        ImportError: For a URL when ``fsspec`` is not installed.
        OSError: When the location cannot be created (``FileNotFoundError``: it
            does not exist and ``create`` is false).
    """
    text = os.fspath(location)
    if "://" not in text:
        return _LocalStore(Path(text).expanduser(), create)
    if text.startswith("file://"):
        return _LocalStore(Path(text[len("file://") :]), create)
    try:
        from fsspec.core import url_to_fs
    except ImportError:
        raise ImportError(
            f"the cache location {text!r} needs the 'fsspec' package; "
            "install it with `pip install daglite[cache]`"
        ) from None
    fs, root = url_to_fs(text)
    if "file" in _protocols(fs):
        return _LocalStore(Path(root), create)
    return _FsspecStore(fs, root, text, create)


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def default_location() -> str:
    """``$DAGLITE_CACHE_DIR``, else the platform's cache directory plus ``daglite``."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return configured
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        return str(base / "daglite" / "Cache")
    if sys.platform == "darwin":
        return str(Path.home() / "Library" / "Caches" / "daglite")
    return str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "daglite")
