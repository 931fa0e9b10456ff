"""Every path the project reads or writes, local or `gs://`, goes through here.

Paths are strings: a local path (made absolute once, by `resolve`) or a URL (`gs://bucket/dir`,
never touched by `os.path`). Files go through `etils.epath` (what orbax uses for its directories),
arrays through tensorstore (orbax). Two settings are fixed on import, before etils or gcsfs look:

- `EPATH_USE_TF=false`: otherwise epath routes gs:// through `tf.io.gfile` as soon as TensorFlow
  is imported (the data pipeline imports it), and gfile cannot be pointed at an emulator; with
  it, gs:// goes through gcsfs on every host, the same way in tests and on a pod.
- `GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`: gcsfs's zonal-bucket extension first tries a gRPC
  endpoint (a 60 s timeout against an emulator); plain buckets need none of it.

Emulator (tests, `launch/local.sh`): `STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT` (gcsfs) and
`TENSORSTORE_GCS_HTTP_URL` + `GOOGLE_AUTH_TOKEN_FOR_TESTING` (tensorstore), as tests/gcs.py sets.

GCS objects are written whole (no append, no rename of directories): writers here either write
an object in one go (`write_text`, `write_bytes`) or upload a finished local file (`upload`).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

os.environ.setdefault("EPATH_USE_TF", "false")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import fsspec  # noqa: E402
from etils import epath  # noqa: E402

# Several processes write the same bucket: never answer `exists`/listings from a stale cache.
fsspec.config.conf.setdefault("gs", {}).setdefault("use_listings_cache", False)


class StorageError(OSError):
    """A path cannot be reached or used; the message names the path and what to fix."""


_SCHEMES = ("gs://",)


def is_url(path: str) -> bool:
    return str(path).startswith(_SCHEMES)


def resolve(path: str) -> str:
    """The canonical form of a user-given path: URLs unchanged, local paths absolute."""
    path = str(path)
    if "://" in path and not is_url(path):
        raise StorageError(f"{path!r}: unsupported scheme; use a local path or gs://BUCKET/...")
    return path.rstrip("/") if is_url(path) else os.path.abspath(path)


def join(path: str, *parts: str) -> str:
    return "/".join([str(path).rstrip("/"), *parts]) if is_url(path) else os.path.join(path, *parts)




def basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] if is_url(path) else os.path.basename(path)




def exists(path: str) -> bool:
    return epath.Path(path).exists()


def isdir(path: str) -> bool:
    return epath.Path(path).is_dir()


def isfile(path: str) -> bool:
    p = epath.Path(path)
    return p.exists() and not p.is_dir()


def stat(path: str) -> tuple[int, int]:
    """(size in bytes, modification time in ns) of a file; a change of either means new content."""
    if is_url(path):
        st = epath.Path(path).stat()
        return int(st.length), int(st.mtime) * 10**9
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def makedirs(path: str) -> None:
    """Creates a directory and its parents (a no-op on GCS, whose directories are prefixes)."""
    if not is_url(path):
        os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
    """Names directly under `path` (sorted); [] when it does not exist."""
    p = epath.Path(path)
    if not p.exists():
        return []
    return sorted(c.name for c in p.iterdir())


def glob(pattern: str) -> list[str]:
    """Sorted matches of a pattern (`*`, `?`, `[..]`; on GCS no `**`)."""
    if is_url(pattern):
        head, _, rest = pattern[len("gs://"):].partition("/")
        # epath globs relative to a fixed prefix: split at the first component holding a wildcard.
        parts = rest.split("/")
        fixed = []
        for part in parts:
            if any(c in part for c in "*?["):
                break
            fixed.append(part)
        base = epath.Path("gs://" + "/".join([head, *fixed]))
        rel = "/".join(parts[len(fixed):])
        if not rel:
            return [str(base)] if base.exists() else []
        return sorted(str(p) for p in base.glob(rel))
    import glob as glob_lib  # noqa: PLC0415

    return sorted(glob_lib.glob(pattern))




def read_text(path: str) -> str:
    return epath.Path(path).read_text()


def write_bytes(path: str, data: bytes) -> None:
    """Writes a whole file; atomic (temp file + rename locally, one object upload on GCS)."""
    if is_url(path):
        epath.Path(path).write_bytes(data)
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode())


def read_json(path: str) -> Any:
    return json.loads(read_text(path))


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2))


def open_file(path: str, mode: str = "rb"):
    """A file object ('rb' / 'r' for reading, e.g. gzip.open(open_file(url)))."""
    if mode not in ("r", "rb"):
        raise ValueError(f"open_file reads only (mode 'r' or 'rb'); write whole files with write_bytes, got {mode!r}")
    return epath.Path(path).open(mode)


def upload(local_file: str, path: str) -> None:
    """Copies a finished local file to `path` (overwrites)."""
    if is_url(path):
        epath.Path(local_file).copy(epath.Path(path), overwrite=True)
    else:
        write_bytes(path, open(local_file, "rb").read())


def download(path: str, local_file: str) -> None:
    """Copies `path` to a local file, atomically."""
    os.makedirs(os.path.dirname(local_file) or ".", exist_ok=True)
    tmp = f"{local_file}.tmp-{os.getpid()}"
    if is_url(path):
        epath.Path(path).copy(epath.Path(tmp), overwrite=True)
    else:
        shutil.copyfile(path, tmp)
    os.replace(tmp, local_file)






def check_writable(path: str, what: str) -> None:
    """Fails with a StorageError naming `what` (e.g. "--workdir") unless `path` can be written:
    for gs://, the bucket must exist and accept an object; locally, the directory must be creatable."""
    probe = join(path, f".write-probe-{os.getpid()}")
    try:
        if is_url(path):
            bucket = path[len("gs://"):].split("/", 1)[0]
            if not bucket:
                raise StorageError(f"{what} {path!r} names no bucket; use gs://BUCKET/DIR")
            if not epath.Path(f"gs://{bucket}").exists():
                raise StorageError(f"{what} {path!r}: bucket gs://{bucket} does not exist (or this host cannot "
                                   f"see it); create it (gcloud storage buckets create gs://{bucket}) or fix the path")
        makedirs(path)
        write_bytes(probe, b"")
        epath.Path(probe).unlink()
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001 (network, auth, permission: all reported the same way)
        raise StorageError(f"{what} {path!r} cannot be written ({type(e).__name__}: {e}); check the path, "
                           f"the credentials of this host and that the storage is reachable") from e
