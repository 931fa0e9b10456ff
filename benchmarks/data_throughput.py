"""Per-host loader throughput: P processes reading a gs:// cache (fake-gcs-server), vs the debug train step.

    JAX_PLATFORMS=cpu python benchmarks/data_throughput.py [--processes=2] [--rows_per_host=4,16,32]
        [--batches=64] [--steps=5] [--out=benchmarks/results/data_throughput.json]

Measures, on this machine, with the debug config (configs/debug.py, bundled mixture, T = 256):
  tokenize   `loader.build_caches` into gs://BUCKET/cache on a local fake-gcs-server: tokenize
             locally, upload; once per corpus and tokenizer (tokens/s)
  serve      P processes at once, each standing for a host (its own empty mirror directory), each
             reading its 1/P of the global rows (process p: rows p*R .. p*R+R-1 for R rows per host,
             global batch P*R): `make_iterator(..., build_missing=False)` time (mirror download +
             open), then tokens/s over --batches batches (every position of every [R, T] batch,
             padding included: what the step consumes), CPU seconds per million tokens, the loader's
             threads (and all of the process's, TF's and XLA's included), the process's peak RSS,
             and the share of real (non-padding) positions
  train      a jitted AdamW step of the debug model (fp32, masked next-token cross-entropy on the
             loader's batches) at the debug global batch on this machine's default device, tokens/s;
             a host of a P-process job supplies 1/P of that
and prints serve / (train / P) per host: the loader is not the bottleneck when it is > 1.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _threads() -> tuple[int, int]:
    """(OS threads of this process (TF, XLA, gcsfs... included), Python threads of the loader and grain)."""
    import threading

    with open("/proc/self/status") as f:
        total = int(next(line for line in f if line.startswith("Threads:")).split()[1])
    return total, sum(t.name.startswith(("glm-data", "grain")) for t in threading.enumerate())


def _cfg(cache_dir: str, *overrides: str):
    from glm_jax import config

    return config.load(os.path.join(REPO, "configs", "debug.py"), [f"data.cache_dir={cache_dir!r}", *overrides])


def measure_tokenize(cache_dir: str) -> dict:
    from glm_jax.data import loader

    cfg = _cfg(cache_dir)
    t0 = time.perf_counter()
    built = loader.build_caches(cfg)
    dt = time.perf_counter() - t0
    tokens = int(sum(s.cached.lengths.sum() for s in loader.task_streams(cfg, build_missing=False)))
    return {"tasks": built, "tokens": tokens, "seconds": dt, "tokens_per_s": tokens / dt}


def _serve_worker(p: int, rows_per_host: int, processes: int, batches: int, cache_dir: str, mirror: str,
                  barrier, queue) -> None:
    """One "host": opens the gs:// cache through its own mirror, reads its rows, reports."""
    os.environ["GLM_JAX_DATA_MIRROR"] = mirror
    from glm_jax.data import loader

    cfg = _cfg(cache_dir, f"train.batch_size={processes * rows_per_host}")
    rows = range(p * rows_per_host, (p + 1) * rows_per_host)
    t0 = time.perf_counter()
    it = loader.make_iterator(cfg, rows=rows, build_missing=False)
    open_s = time.perf_counter() - t0
    first = next(it)  # the first packing flush of every row stream
    barrier.wait()  # all hosts read at the same time, as in a job
    real = 0
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(batches):
        real += int((next(it)["segment_ids"] > 0).sum())
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    tokens = batches * first["tokens"].size
    queue.put({"process": p, "rows": [rows.start, rows.stop - 1], "open_s": open_s, "seconds": dt,
               "tokens_per_s": tokens / dt, "cpu_s_per_mtok": 1e6 * cpu / tokens, "fill": real / tokens,
               "process_threads": _threads()[0], "loader_threads": _threads()[1],
               "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def measure_serve(cache_dir: str, processes: int, rows_per_host: int, batches: int, tmp: str) -> dict:
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_serve_worker, args=(p, rows_per_host, processes, batches, cache_dir,
                                                     os.path.join(tmp, f"mirror-{rows_per_host}-{p}"), barrier, queue))
             for p in range(processes)]
    for pr in procs:
        pr.start()
    hosts = sorted((queue.get(timeout=900) for _ in procs), key=lambda h: h["process"])
    for pr in procs:
        pr.join()
        if pr.exitcode:
            raise RuntimeError(f"serve worker exited with {pr.exitcode}")
    return {"rows_per_host": rows_per_host, "global_batch": processes * rows_per_host, "batches": batches,
            "hosts": hosts}


def measure_train(cache_dir: str, steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from glm_jax import model
    from glm_jax.data import loader

    cfg = _cfg(cache_dir)
    mcfg = cfg.model
    params = model.init_params(mcfg, jax.random.key(0))
    opt = optax.adamw(cfg.train.lr, b1=cfg.train.adam_b1, b2=cfg.train.adam_b2, weight_decay=cfg.train.weight_decay)
    opt_state = opt.init(params)

    def loss_fn(p, b):
        logits = model.forward(p, b["tokens"], mcfg, positions=b["positions"], segment_ids=b["segment_ids"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, b["targets"])
        return (ce * b["loss_mask"]).sum() / jnp.maximum(b["loss_mask"].sum(), 1.0)

    @jax.jit
    def step(p, s, b):
        loss, g = jax.value_and_grad(loss_fn)(p, b)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s, loss

    it = loader.make_iterator(cfg, rows=range(cfg.train.batch_size), build_missing=False)
    batches = [{k: jnp.asarray(v) for k, v in next(it).items()} for _ in range(steps + 1)]
    params, opt_state, loss = step(params, opt_state, batches[0])  # compile
    loss.block_until_ready()
    t0 = time.perf_counter()
    for b in batches[1:]:
        params, opt_state, loss = step(params, opt_state, b)
    loss.block_until_ready()
    dt = time.perf_counter() - t0
    tokens = steps * batches[0]["tokens"].size
    return {"steps": steps, "global_batch": cfg.train.batch_size, "seconds": dt, "tokens_per_s": tokens / dt,
            "loss": float(loss), "device": str(jax.devices()[0].device_kind)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--rows_per_host", default="4,16,32")
    p.add_argument("--batches", type=int, default=64, help="batches timed per host (after the first)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", default="")
    args = p.parse_args()
    from tests.gcs import make_bucket, start_server

    server = start_server()  # sets STORAGE_EMULATOR_HOST, which the spawned workers inherit
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["GLM_JAX_DATA_MIRROR"] = os.path.join(tmp, "builder-mirror")
            cache_dir = make_bucket(server, "bench-data") + "/cache"
            cfg = _cfg(cache_dir)
            result = {"config": "configs/debug.py", "mixture": cfg.data.mixture, "seq_len": cfg.train.seq_len,
                      "cache_dir": "gs:// on fake-gcs-server (loopback)", "processes": args.processes,
                      "read_threads": cfg.data.read_threads, "cpus": os.cpu_count(),
                      "tokenize": measure_tokenize(cache_dir),
                      "serve": [measure_serve(cache_dir, args.processes, int(r), args.batches, tmp)
                                for r in args.rows_per_host.split(",")],
                      "train": measure_train(cache_dir, args.steps)}
    finally:
        server.stop()
    need = result["train"]["tokens_per_s"] / args.processes
    for s in result["serve"]:
        for h in s["hosts"]:
            h["serve_over_train_share"] = h["tokens_per_s"] / need
    print(f"tokenize + upload: {result['tokenize']['tokens_per_s']:,.0f} tokens/s "
          f"({result['tokenize']['tokens']:,} tokens in {result['tokenize']['seconds']:.1f} s, once)")
    print(f"train: {result['train']['tokens_per_s']:,.0f} tokens/s (debug step, global batch "
          f"{result['train']['global_batch']}, {result['train']['device']}); a host of {args.processes} supplies "
          f"{need:,.0f}/s")
    print(f"{'rows/host':>9} {'batch':>5} {'host':>4} {'open s':>7} {'tokens/s':>10} {'cpu s/Mtok':>10} "
          f"{'threads':>11} {'rss MB':>7} {'fill':>5} {'vs need':>8}")
    for s in result["serve"]:
        for h in s["hosts"]:
            print(f"{s['rows_per_host']:>9} {s['global_batch']:>5} {h['process']:>4} {h['open_s']:>7.2f} "
                  f"{h['tokens_per_s']:>10,.0f} {h['cpu_s_per_mtok']:>10.2f} "
                  f"{h['loader_threads']:>3} of {h['process_threads']:>4} "
                  f"{h['max_rss_mb']:>7.0f} {h['fill']:>5.2f} {h['serve_over_train_share']:>7.1f}x")
    worst = min(h["serve_over_train_share"] for s in result["serve"] for h in s["hosts"])
    print(f"slowest host serves {worst:.1f}x what it must supply "
          f"({'loader is not the bottleneck' if worst > 1 else 'LOADER IS THE BOTTLENECK'})")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
