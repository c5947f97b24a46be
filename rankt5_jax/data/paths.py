"""One path layer for local files and Google Cloud Storage (`gs://bucket/key`).

Every reader and writer of the package that may meet a bucket goes through here: local paths
behave exactly as `open`/`os.path` (the functions are those), `gs://` paths go through fsspec's
gcsfs (streamed reads in blocks, uploads finalised on close, 5xx and 429 answers retried with
backoff by gcsfs). orbax reaches the same buckets through etils.epath, which `configure` points
at the same gcsfs (`EPATH_USE_TF=false`), and its arrays through tensorstore.

One variable points the whole program at a local GCS emulator: with `STORAGE_EMULATOR_HOST`
set (`http://127.0.0.1:PORT`), `configure` sets what each library reads (tensorstore's
`TENSORSTORE_GCS_HTTP_URL` and a test token, gcsfs anonymous and without its gRPC bucket probe);
variables already set are kept. TensorFlow's own GCS file system has no endpoint setting: it
always talks to Google, so nothing here hands it a `gs://` path (see docs/scaling.md).

A path with another scheme (`s3://`, `http://`) is refused naming it (`ConfigError`).
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import logging
import os
import posixpath
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import IO, Any, NamedTuple

from rankt5_jax.errors import ConfigError, RankT5Error

SCHEMES = ("gs",)  # the object stores read and written (fsspec protocol names)


class StorageError(RankT5Error, OSError):
    """A bucket refused or failed a request (permission, quota, an error left after gcsfs'
    retries): one line naming the path (`rankt5` prints it and exits 2)."""


@contextlib.contextmanager
def _bucket_errors(path: str) -> Iterator[None]:
    """Turns gcsfs' errors of a bucket request into `StorageError` naming `path` on one line;
    a missing object stays `FileNotFoundError` (and an existing one `FileExistsError`)."""
    try:
        yield
    except (FileNotFoundError, FileExistsError, RankT5Error):
        raise
    except Exception as err:
        # gcsfs raises OSError (403: "Forbidden"), ValueError (400: "Bad Request", e.g. an
        # invalid bucket name) or its HttpError (not an OSError) once its retries of 5xx/429
        # are spent; aiohttp and google-auth their own kinds.
        bad_request = isinstance(err, ValueError) and str(err).startswith("Bad Request")
        if not (
            isinstance(err, OSError) or bad_request or type(err).__module__.startswith(_CLIENTS)
        ):
            raise
        reason = " ".join(str(err).split()) or type(err).__name__
        raise StorageError(f"{path}: {reason}") from err


_CLIENTS = ("gcsfs", "aiohttp", "google")


def scheme(path: str | os.PathLike) -> str | None:
    """`gs` for `gs://...`, None for a local path (`file://` counts as local); another scheme is
    a `ConfigError` naming the path."""
    path = os.fspath(path)
    head, sep, _ = path.partition("://")
    if not sep or "/" in head or not head.isidentifier():
        return None
    if head == "file":
        return None
    if head not in SCHEMES:
        raise ConfigError(
            f"{path}: unknown storage scheme {head}:// (local paths and "
            + ", ".join(f"{name}://" for name in SCHEMES)
            + " are read and written)"
        )
    return head


def is_remote(path: str | os.PathLike) -> bool:
    """True for a bucket path (`gs://`)."""
    return scheme(path) is not None


def _local(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    return path[len("file://") :] if path.startswith("file://") else path


def configure() -> None:
    """Sets the per-library variables (see the module's notes); called before any bucket use."""
    os.environ.setdefault("EPATH_USE_TF", "false")  # orbax's epath through gcsfs, not TF's GCS
    _forget_epath_backend()
    # gcsfs logs each spent retry with its traceback; without a handler of its own Python would
    # print that to stderr before our one-line error (a configured root still gets it).
    gcsfs_log = logging.getLogger("gcsfs")
    if not gcsfs_log.handlers:
        gcsfs_log.addHandler(logging.NullHandler())
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    if host:
        url = host if "://" in host else f"http://{host}"
        os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)
        os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
        # gcsfs' zonal/HNS layer asks a gRPC control plane for each bucket's type; emulators
        # have none (and it would wait a minute per bucket).
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        import fsspec.config

        # Every gcsfs instance (ours and etils.epath's for orbax) anonymous: the emulator takes
        # no credentials, and google-auth's lookup would ask the metadata server off loopback.
        fsspec.config.conf.setdefault("gcs", {}).setdefault("token", "anon")


def _forget_epath_backend() -> None:
    """etils.epath decides once per process, at the first `epath.Path` of any path, whether
    `gs://` goes to TensorFlow's GCS client (`_is_tf_installed`, cached). Anything that made a
    Path before `EPATH_USE_TF` was set (JAX's persistent compilation cache makes one at the
    first compile) would send orbax's `gs://` to TensorFlow's client: forget that choice."""
    gpath = sys.modules.get("etils.epath.gpath")
    chosen = getattr(gpath, "_is_tf_installed", None)
    use_tf = os.environ.get("EPATH_USE_TF", "").lower() not in ("false", "no", "f", "0")
    if hasattr(chosen, "cache_clear") and not use_tf and chosen():
        chosen.cache_clear()


def filesystem(path: str | os.PathLike):
    """The fsspec file system of a bucket path."""
    name = scheme(path)
    if name is None:
        raise ValueError(f"{path} is a local path")
    configure()
    import fsspec

    try:
        return fsspec.filesystem(name)
    except ImportError as err:
        raise ConfigError(
            f"{path}: reading {name}:// needs gcsfs (pip install 'rankt5_jax[gcs]')"
        ) from err


def _key(path: str) -> str:
    return path.rstrip("/")


def open(path: str | os.PathLike, mode: str = "r", **kwargs: Any) -> IO:  # noqa: A001
    """`open` for local paths; a streamed (read) or uploaded-on-close (write) object in a bucket.
    A missing object is `FileNotFoundError` as locally."""
    path = os.fspath(path)
    if not is_remote(path):
        return builtins.open(_local(path), mode, **kwargs)
    with _bucket_errors(path):
        return filesystem(path).open(path, mode, **kwargs)


def exists(path: str | os.PathLike) -> bool:
    path = os.fspath(path)
    if not is_remote(path):
        return os.path.exists(_local(path))
    with _bucket_errors(path):
        return filesystem(path).exists(_key(path))


def isfile(path: str | os.PathLike) -> bool:
    path = os.fspath(path)
    if not is_remote(path):
        return os.path.isfile(_local(path))
    with _bucket_errors(path):
        return filesystem(path).isfile(path)


def isdir(path: str | os.PathLike) -> bool:
    """A local folder, or a bucket prefix with at least one object under it."""
    path = os.fspath(path)
    if not is_remote(path):
        return os.path.isdir(_local(path))
    with _bucket_errors(path):
        return filesystem(path).isdir(_key(path))


def listdir(path: str | os.PathLike) -> list[str]:
    """The names (not paths) directly under `path`; `FileNotFoundError` where there are none."""
    path = os.fspath(path)
    if not is_remote(path):
        return os.listdir(_local(path))
    with _bucket_errors(path):
        entries = filesystem(path).ls(_key(path), detail=False, refresh=True)
    names = sorted({posixpath.basename(entry.rstrip("/")) for entry in entries})
    return [name for name in names if name]


def makedirs(path: str | os.PathLike, exist_ok: bool = True) -> None:
    """`os.makedirs`; nothing in a bucket (a prefix exists once an object is under it)."""
    path = os.fspath(path)
    if not is_remote(path):
        os.makedirs(_local(path), exist_ok=exist_ok)


def remove(path: str | os.PathLike) -> None:
    path = os.fspath(path)
    if not is_remote(path):
        os.remove(_local(path))
        return
    fs = filesystem(path)
    with _bucket_errors(path):
        if not fs.isfile(path):
            raise FileNotFoundError(path)
        fs.rm_file(path)


def rmtree(path: str | os.PathLike, ignore_errors: bool = False) -> None:
    path = os.fspath(path)
    if not is_remote(path):
        shutil.rmtree(_local(path), ignore_errors=ignore_errors)
        return
    try:
        with _bucket_errors(path):
            filesystem(path).rm(_key(path), recursive=True)
    except (FileNotFoundError, StorageError):
        if not ignore_errors:
            raise


def join(path: str | os.PathLike, *parts: str) -> str:
    path = os.fspath(path)
    return posixpath.join(path, *parts) if is_remote(path) else os.path.join(path, *parts)


def dirname(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if not is_remote(path):
        return os.path.dirname(path)
    head = posixpath.dirname(path.rstrip("/"))
    return head if head.count("/") >= 2 and not head.endswith(":/") else path.rstrip("/")


def basename(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    return posixpath.basename(path.rstrip("/")) if is_remote(path) else os.path.basename(path)


def abspath(path: str | os.PathLike) -> str:
    """`os.path.abspath` of a local path; a bucket path as it is."""
    path = os.fspath(path)
    return path.rstrip("/") if is_remote(path) else os.path.abspath(_local(path))


def getmtime(path: str | os.PathLike) -> float:
    path = os.fspath(path)
    if not is_remote(path):
        return os.path.getmtime(_local(path))
    with _bucket_errors(path):
        return filesystem(path).modified(path).timestamp()


def upload(local: str, path: str | os.PathLike) -> None:
    """Copies the local file `local` to `path` (one object upload: it appears complete or not at
    all; locally a plain copy)."""
    path = os.fspath(path)
    if not is_remote(path):
        shutil.copyfile(local, _local(path))
        return
    try:
        with _bucket_errors(path):
            filesystem(path).put_file(local, path)
    except FileNotFoundError as err:  # gcsfs names the upload URL
        bucket = "/".join(path.split("/", 3)[:3])
        raise StorageError(f"{path}: cannot upload, bucket {bucket} not found") from err


def copy(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Copies one file between any two places (not atomic by itself: see `atomic.copy_file`)."""
    source, path = os.fspath(source), os.fspath(path)
    if not is_remote(source):
        upload(_local(source), path)
    elif not is_remote(path):
        with _bucket_errors(source):
            filesystem(source).get_file(source, _local(path))
    else:
        with _bucket_errors(source):
            filesystem(source).copy(source, path)


def download_tree(path: str | os.PathLike, local: str) -> list[str]:
    """Copies every object under the bucket prefix `path` to the local folder `local` (kept
    relative paths); -> the local files written. A local `path` is copied likewise."""
    path = os.fspath(path)
    written = []
    if not is_remote(path):
        if os.path.isdir(path):
            shutil.copytree(path, local, dirs_exist_ok=True)
            for root, _, files in os.walk(local):
                written += [os.path.join(root, name) for name in files]
        return written
    fs = filesystem(path)
    prefix = _key(path)
    with _bucket_errors(path):
        names = fs.find(prefix)
    for name in names:
        rel = posixpath.relpath(name, prefix.split("://", 1)[-1])
        target = os.path.join(local, *rel.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with _bucket_errors(path):
            fs.get_file(name, target)
        written.append(target)
    return written


def upload_tree(local: str, path: str | os.PathLike) -> None:
    """Uploads every file under the local folder `local` to `path` (each file one object)."""
    for root, _, files in os.walk(local):
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(root, name), local)
            upload(os.path.join(root, name), join(path, *rel.split(os.sep)))


def cache_dir(path: str | os.PathLike, kind: str = "cache") -> str:
    """A local folder of this process kept for the bucket path `path` (made on first use):
    where files that only a local path can take (a SentencePiece model, TensorFlow's iterator
    state) are downloaded to or staged in."""
    digest = hashlib.sha1(os.fspath(path).encode()).hexdigest()[:16]
    folder = os.path.join(tempfile.gettempdir(), f"rankt5-{kind}-{os.getpid()}", digest)
    os.makedirs(folder, exist_ok=True)
    return folder


def local_copy(path: str | os.PathLike) -> str:
    """A local path holding `path`'s content: `path` itself when local, else a downloaded copy
    (for small files that a library reads by name only, e.g. a SentencePiece model)."""
    path = os.fspath(path)
    if not is_remote(path):
        return _local(path)
    target = os.path.join(cache_dir(path, "copy"), basename(path))
    with _bucket_errors(path):
        filesystem(path).get_file(path, target)
    return target


class Cached(NamedTuple):
    """A bucket object and where this host keeps its copy (`cached`, `fetch`)."""

    url: str  # gs://bucket/key
    local: str  # its path in this host's cache folder
    size: int


def cached(path: str | os.PathLike, kind: str = "cache", tree: bool = False) -> list[Cached]:
    """The objects matching the glob `path` (`tree=True`: every object under the prefix
    `path`), sorted by name, each with the path its copy has in a cache folder of this host;
    nothing is downloaded (`fetch` does). `[]` when nothing matches.

    The cache folder, `$TMPDIR/rankt5-<kind>/<digest>`, is named by `path` and by every
    matching object's name, size and generation: a rewritten object has a new generation, so a
    changed set of objects gets a new folder and a stale copy is never read. The folder is
    shared by the processes of the host and kept between runs, so a resumed or second run
    downloads nothing. The copies keep the objects' names (relative paths under a `tree`)."""
    path = os.fspath(path)
    fs = filesystem(path)
    with _bucket_errors(path):
        fs.invalidate_cache()
        found = fs.find(_key(path), detail=True) if tree else fs.glob(path, detail=True)
    if tree:
        prefix = _key(path).split("://", 1)[-1]
        rel = {name: posixpath.relpath(name, prefix) for name in found}
    else:
        rel = {name: posixpath.basename(name) for name in found}
    listing = sorted(
        (
            rel[name],
            name,
            int(info.get("size") or 0),
            str(info.get("generation") or info.get("updated")),
        )
        for name, info in found.items()
        if info.get("type", "file") == "file"
    )
    digest = hashlib.sha1(repr((path, [(r, s, g) for r, _, s, g in listing])).encode())
    folder = os.path.join(tempfile.gettempdir(), f"rankt5-{kind}", digest.hexdigest()[:16])
    return [
        Cached(f"{scheme(path)}://{name}", os.path.join(folder, *r.split("/")), size)
        for r, name, size, _ in listing
    ]


def fetch(objects: list[Cached]) -> None:
    """Downloads each of `objects` (from `cached`) that this host's cache lacks. A copy is
    downloaded to a temporary name and renamed when complete, so a copy under its own name is
    whole (and of its object's size) whoever wrote it."""
    for item in objects:
        if os.path.isfile(item.local) and os.path.getsize(item.local) == item.size:
            continue
        os.makedirs(os.path.dirname(item.local), exist_ok=True)
        partial = f"{item.local}.partial-{os.getpid()}"
        with _bucket_errors(item.url):
            filesystem(item.url).get_file(item.url, partial)
        os.replace(partial, item.local)


def local_tree(path: str | os.PathLike, kind: str = "tree") -> str:
    """A local folder holding every object under the bucket prefix `path` (relative paths
    kept), downloaded once into this host's cache (`cached`); a local `path` as it is. For
    folders that a library reads by local name only (a token index, a Hugging Face
    checkpoint). Nothing under `path`: `FileNotFoundError`."""
    path = os.fspath(path)
    if not is_remote(path):
        return _local(path)
    objects = cached(path, kind, tree=True)
    if not objects:
        raise FileNotFoundError(path)
    fetch(objects)
    folder = objects[0].local
    for _ in posixpath.relpath(objects[0].url, _key(path)).split("/"):
        folder = os.path.dirname(folder)
    return folder
