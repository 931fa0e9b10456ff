"""What the tests need to run the project as a user does, in another process: its environment,
`python -m MODULE ...` from the checkout, and a free port for a jax.distributed coordinator."""

import os
import random
import signal
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env(devices=8, quiet=True, **extra):
    """This process's environment for a child importing this checkout's glm_jax on CPU: `devices`
    simulated CPU devices (None: whatever the child sets), the libraries' C++ logging off unless
    not `quiet` (as in a user's shell). The suite's compilation cache (tests/conftest.py) passes
    through. `extra` sets variables; a None value removes one."""
    e = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    extra = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}" if devices else None,
             "TF_CPP_MIN_LOG_LEVEL": "3" if quiet else None, **extra}
    for key, value in extra.items():
        if value is None:
            e.pop(key, None)
        else:
            e[key] = str(value)
    return e


_env = env  # for run(), whose argument has the name


def tpu_env(**extra):
    """The environment of a child compiling with libtpu for a TPU topology: libtpu's compiler
    without the test process's simulated CPU devices, each TPU compile done once (no persistent
    cache)."""
    return env(devices=None, JAX_COMPILATION_CACHE_DIR=None, ALLOW_MULTIPLE_LIBTPU_LOAD="1", **extra)


def run(*args, env=None, timeout=600, check=True):
    """`python ARGS...` (e.g. "-m", "glm_jax.train", ...) in the checkout, output captured; with
    `check`, a non-zero exit fails the test showing the end of stderr."""
    proc = subprocess.run([sys.executable, *args], env=_env() if env is None else env,
                          capture_output=True, text=True, cwd=REPO, timeout=timeout)
    if check and proc.returncode:
        raise AssertionError(f"exit {proc.returncode}: {' '.join(map(str, args))}\n{proc.stderr[-3000:]}")
    return proc


def sigterm_on(marker: str, *args, env=None, timeout=600) -> str:
    """Starts `python ARGS...` in the checkout, sends it SIGTERM (a preemption) once a line of its
    output contains `marker`, waits for it to exit 0 and returns all it printed."""
    proc = subprocess.Popen([sys.executable, *args], env=_env() if env is None else env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    for line in proc.stdout:
        out.append(line)
        if marker in line:
            proc.send_signal(signal.SIGTERM)
            break
    out += proc.stdout.readlines()
    assert proc.wait(timeout=timeout) == 0, "".join(out)[-3000:]
    return "".join(out)


def free_port():
    """A loopback port for a jax.distributed coordinator, below the kernel's ephemeral range
    (ports asked for with bind(0) and every outgoing connection's local port come from there, so
    a client elsewhere in the suite cannot take it between now and the coordinator's bind), and
    random, so two tests starting jobs at once do not pick the same one."""
    low = _ephemeral_low()
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port below {low} on 127.0.0.1")


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
