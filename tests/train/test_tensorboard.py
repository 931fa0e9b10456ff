"""TensorBoard shows what the loop logs, and writing it imports no TensorFlow."""

import numpy as np

from tests import cli


def test_tensorboard_reads_back_every_scalar_at_its_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from glm_jax.train.tensorboard import ScalarWriter

    logged = {step: {"loss": 3.0 / step, "eval/bundled_zh/loss": 4.0 / step, "learning_rate": 1e-3 * step}
              for step in (1, 2, 5)}
    writer = ScalarWriter(str(tmp_path / "tb"))
    for step, scalars in logged.items():
        writer.write_scalars(step, scalars)
    writer.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == sorted(logged[1])
    for tag in logged[1]:
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in got] == sorted(logged)
        np.testing.assert_allclose([v for _, v in got], [logged[s][tag] for s in sorted(logged)], rtol=1e-7)


def test_the_training_loop_and_its_metrics_import_no_tensorflow(tmp_path):
    code = ("import sys; import glm_jax.train.loop, glm_jax.train.metrics, glm_jax.train.tensorboard as tb; "
            "w = tb.ScalarWriter(sys.argv[1]); w.write_scalars(1, {'loss': 1.0}); w.close(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'seqio', 'clu')))")
    proc = cli.run("-c", code, str(tmp_path / "tb"), env=cli.env(devices=1))
    assert proc.stdout.split("\n")[-2] == "[]", proc.stdout[-2000:]
