"""What every command line (`python -m glm_jax.X`) shares: library logging off unless `--verbose`.

absl CLIs start through `run(main)`, which defines `--verbose`; an argparse CLI adds its own
`--verbose` and calls `quiet_libraries` before importing the libraries it uses.
"""

import logging
import os
import sys

from absl import app, flags

_VERBOSE = flags.DEFINE_bool("verbose", False, "Show library INFO logging (absl, orbax, TF, XLA).")


def quiet_libraries(verbose: bool, *, tensorflow: bool = True) -> None:
    """Library INFO logging off (absl/orbax/grain through Python logging, TF and XLA's C++ logs)
    unless `verbose`; warnings and errors still show. `tensorflow=False` for a CLI that never
    imports it (the data pipeline does), which then skips importing it here."""
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from absl import logging as absl_logging  # noqa: PLC0415

    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)
    for name in ("jax", "orbax", "absl", "grain", "tensorflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if not tensorflow:
        return
    # TensorFlow's C++ start-up lines (CUDA probing: "Could not find cuda drivers", absl's
    # "before InitializeLog") ignore TF_CPP_MIN_LOG_LEVEL; they come from its import alone, so
    # import it once with the stderr file descriptor closed. Python errors still surface.
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            import tensorflow  # noqa: F401,PLC0415
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def run(main, *, tensorflow: bool = True) -> None:
    """`absl.app.run(main)` with library logging quiet unless --verbose (see quiet_libraries)."""

    # Listed in the running CLI's own --help (absl shows the main module's flags there).
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[_VERBOSE.name])

    def quiet_main(argv):
        quiet_libraries(_VERBOSE.value, tensorflow=tensorflow)
        return main(argv)

    app.run(quiet_main)
