"""The GCS emulator fixture itself: it keeps answering however many requests a session makes."""

import threading

from glm_jax import storage


def test_emulator_answers_more_requests_than_its_log_pipe_holds(gcs_bucket):
    """fake-gcs-server logs every request to a pipe; undrained, it blocks after ~64 KB (~500 requests)."""
    done = threading.Event()

    def requests():
        for i in range(1500):
            storage.exists(f"{gcs_bucket}/object-{i}")
        done.set()

    threading.Thread(target=requests, daemon=True).start()
    assert done.wait(timeout=240), "the emulator stopped answering: its log must not go to an unread pipe (tests/gcs.py)"
