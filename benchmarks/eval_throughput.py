"""lm-eval throughput: our `glm_jax` model vs lm-eval's own `hf` backend, same weights, same requests.

    python benchmarks/eval_throughput.py [--mc_docs=94] [--gen_docs=16] [--max_gen_toks=32] [--batch_size=8] \\
        [--out=benchmarks/results/eval_throughput.json]

The debug model (configs/debug.py, random weights x3 on every matrix) is exported with
`python -m glm_jax.convert to-hf --dtype=float32`; both backends load that directory in this
process on the same CPU. Requests:
  - log-likelihood: the bundled_mc test docs in lm-eval's MMLU layout, one few-shot example,
    four continuations (" A" .. " D") each;
  - generate_until: bundled_arith test prompts (two few-shot examples), greedy, stop strings
    that never occur, `--max_gen_toks` tokens each, so both backends generate the same number.
Each backend runs every request set twice: `cold` includes its first-call work (our compiles,
torch's warm-up), `warm` is the second run. Reported: requests/s (log-likelihood) and generated
tokens/s (generate_until, tokens counted with our tokenizer on the returned texts), the ratios
ours / hf, and whether both backends returned the same numbers (max |delta log p|, identical
texts). Both use `--batch_size` (lm-eval's hf: requests per batch; ours: packed rows per batch).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEVER = ["<<never>>"]


def export_model(tmp: str) -> str:
    import jax

    from glm_jax import config, model
    from glm_jax.train.checkpoint import save_params

    cfg = config.load(os.path.join(REPO, "configs", "debug.py"))
    params = jax.tree.map(lambda x: x * 3.0 if x.ndim > 2 else x, model.init_params(cfg.model, jax.random.key(0)))
    save_params(os.path.join(tmp, "ckpt"), params, cfg)
    hf = os.path.join(tmp, "hf")
    subprocess.run([sys.executable, "-m", "glm_jax.convert", "to-hf", f"--workdir={tmp}/ckpt", f"--out={hf}",
                    "--dtype=float32"], check=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                   capture_output=True)
    return hf


def _docs(name: str) -> list[dict]:
    with open(os.path.join(REPO, "data", "eval", f"{name}.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def requests(mc_docs: int, gen_docs: int, max_gen_toks: int):
    from lm_eval.api.instance import Instance

    mc = lambda d: (f"{d['question'].strip()}\nA. {d['choices'][0]}\nB. {d['choices'][1]}\nC. {d['choices'][2]}\n"
                    f"D. {d['choices'][3]}\nAnswer:")
    shot = _docs("mc_dev")[0]
    prefix = mc(shot) + " " + "ABCD"[shot["answer"]] + "\n\n"
    ll = [(prefix + mc(d), " " + letter) for d in _docs("mc_test")[:mc_docs] for letter in "ABCD"]
    qa = lambda d: f"Question: {d['question']}\nAnswer:"
    shots = "".join(qa(d) + " " + d["answer"] + "\n\n" for d in _docs("arith_dev")[:2])
    gen = [(shots + qa(d), {"until": NEVER, "max_gen_toks": max_gen_toks, "do_sample": False})
           for d in _docs("arith_test")[:gen_docs]]
    inst = lambda kind, args: [Instance(kind, {}, a, i, ("bench", i, 1)) for i, a in enumerate(args)]
    return inst("loglikelihood", ll), inst("generate_until", gen)


def timed(fn, reqs) -> tuple[float, list]:
    t = time.perf_counter()
    out = fn(reqs)
    return time.perf_counter() - t, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mc_docs", type=int, default=94)
    p.add_argument("--gen_docs", type=int, default=16)
    p.add_argument("--max_gen_toks", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "eval_throughput.json"))
    a = p.parse_args()

    import jax
    import numpy as np
    import torch
    from lm_eval.models.huggingface import HFLM

    from glm_jax.eval.harness import GLMJaxLM

    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = export_model(tmp)
        ll_reqs, gen_reqs = requests(a.mc_docs, a.gen_docs, a.max_gen_toks)
        backends = {"glm_jax": GLMJaxLM(hf=hf_dir, batch_size=a.batch_size),
                    "hf": HFLM(pretrained=hf_dir, dtype="float32", device="cpu", batch_size=a.batch_size)}
        count = backends["glm_jax"].tok_encode
        rows, outputs = {}, {}
        for name, lm in backends.items():
            r = {}
            for run in ("cold", "warm"):
                t_ll, ll = timed(lm.loglikelihood, ll_reqs)
                t_gen, texts = timed(lm.generate_until, gen_reqs)
                tokens = sum(len(count(t)) for t in texts)
                r[run] = {"loglikelihood_s": round(t_ll, 3), "loglikelihood_requests_per_s": round(len(ll) / t_ll, 2),
                          "generate_s": round(t_gen, 3), "generated_tokens": tokens,
                          "generate_tokens_per_s": round(tokens / t_gen, 2)}
            rows[name] = r
            outputs[name] = (ll, texts)
    (ll_a, gen_a), (ll_b, gen_b) = outputs["glm_jax"], outputs["hf"]
    result = {
        "what": "lm-eval requests on the debug model exported fp32: ours (glm_jax) vs lm-eval's hf backend",
        "device": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, shared)",
        "versions": {"jax": jax.__version__, "torch": torch.__version__,
                     "lm_eval": __import__("lm_eval").__version__},
        "loglikelihood_requests": len(ll_reqs), "generate_requests": len(gen_reqs),
        "max_gen_toks": a.max_gen_toks, "batch_size": a.batch_size, "backends": rows,
        "speedup_warm": {"loglikelihood": round(rows["glm_jax"]["warm"]["loglikelihood_requests_per_s"]
                                                / rows["hf"]["warm"]["loglikelihood_requests_per_s"], 2),
                         "generate": round(rows["glm_jax"]["warm"]["generate_tokens_per_s"]
                                           / rows["hf"]["warm"]["generate_tokens_per_s"], 2)},
        "agreement": {"max_abs_logprob_delta": float(np.max(np.abs(np.array([x[0] for x in ll_a])
                                                                     - np.array([x[0] for x in ll_b])))),
                      "same_is_greedy": [x[1] for x in ll_a] == [x[1] for x in ll_b],
                      "same_generations": gen_a == gen_b},
    }
    print(f"{'backend':>8} {'run':>5} {'loglik req/s':>13} {'gen tok/s':>10}")
    for name, r in rows.items():
        for run, v in r.items():
            print(f"{name:>8} {run:>5} {v['loglikelihood_requests_per_s']:>13} {v['generate_tokens_per_s']:>10}")
    print(f"warm speedup (ours / hf): log-likelihood {result['speedup_warm']['loglikelihood']}x, "
          f"generation {result['speedup_warm']['generate']}x; agreement {result['agreement']}")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
