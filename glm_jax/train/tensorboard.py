"""TensorBoard scalars without TensorFlow: tensorboard's own event protos and record framing.

clu's and tf.summary's writers import TensorFlow, the slowest import of a training process; the
loop itself needs none of it (only tokenizing data through seqio does).

    writer = ScalarWriter(logdir)          # logdir: a local directory, made if missing
    writer.write_scalars(step, {"loss": 2.3, "eval/bundled_zh/loss": 2.9})
    writer.flush(); writer.close()

One file `events.out.tfevents.<time>.<host>.<pid>.<n>` per writer, as TensorBoard names them.
"""

from __future__ import annotations

import itertools
import os
import socket
import time

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

_serial = itertools.count()


class ScalarWriter:
    """Appends scalar events to a new event file in `logdir`."""

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_serial)}"
        self.path = os.path.join(logdir, name)
        self._file = open(self.path, "wb")
        self._records = RecordWriter(self._file)
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event) -> None:
        self._records.write(event.SerializeToString())

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
        self._write(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)))

    def flush(self) -> None:
        self._records.flush()

    def close(self) -> None:
        self._records.close()
