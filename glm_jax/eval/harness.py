"""The lm-evaluation-harness model `glm_jax`: GLM weights evaluated in JAX on any mesh.

    python -m glm_jax.eval lm-eval --model glm_jax --model_args workdir=/tmp/run --tasks bundled_mc
    python -m glm_jax.eval lm-eval --model glm_jax --model_args hf=/models/glm-4-9b-hf,fsdp=4,tensor=2 ...

    import glm_jax.eval.harness, lm_eval                      # importing registers `glm_jax`
    lm_eval.simple_evaluate(model="glm_jax", model_args="workdir=/tmp/run", tasks=["bundled_mc"])

Model args (`--model_args k=v,...`):
  workdir=DIR [step=N]   a training workdir (latest finished checkpoint, or step N) or a
                         params-only checkpoint; or
  hf=DIR                 a HuggingFace / THUDM directory (glm_jax.weights.load)
  tokenizer=FILE         tokenizer file instead of the weights' own
  data=, fsdp=, tensor=  the mesh (default: fsdp over every device)
  max_length=N           context length (default the model's max_seq_len)
  max_gen_toks=N         generate_until's default when a request names none (256, as lm-eval's hf)
  pack=false             one log-likelihood request per row instead of many (for checking packing)
lm-eval's `--batch_size N` is the rows per batch (rounded up to a multiple of the batch axes of the
mesh; "auto" or 1: one row per batch device). `--device` is ignored: JAX runs on its devices.

Requests:
  loglikelihood          many requests packed per row (glm_jax.eval.scoring): (sum log p, is_greedy)
  loglikelihood_rolling  the text in disjoint windows of max_length, lm-eval's own windowing
  generate_until         batched KV-cache decoding (glm_jax.model.sampling); stops at GLM's end
                         tokens (<|endoftext|>, <|user|>, <|observation|>) or a stop string;
                         the text is cut at the first stop string, as lm-eval's hf backend does
`--apply_chat_template` renders turns in GLM-4's chat layout (glm_jax/data/chat.py). Special
tokens written in a prompt's text ("[gMASK]<sop>") tokenize as those tokens.

Bad requests raise RequestError naming the request before anything is computed: a generation
without stop strings (`until`), or whose prompt + max_gen_toks exceeds max_length.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from tqdm import tqdm

from glm_jax import config, sharding, weights
from glm_jax.data import chat
from glm_jax.data.tokenizer import END_TOKENS
from glm_jax.eval import scoring
from glm_jax.eval.scoring import RequestError
from glm_jax.model import sampling

SAMPLING_KWARGS = ("do_sample", "temperature", "top_k", "top_p")


def _batch_devices(mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"] * mesh.shape["expert"]


@register_model("glm_jax")
class GLMJaxLM(TemplateLM):
    """lm-eval's LM over glm_jax weights (module docstring)."""

    def __init__(self, workdir: str | None = None, step: int | None = None, hf: str | None = None,
                 tokenizer: str | None = None, data: int = 1, fsdp: int = -1, tensor: int = 1,
                 max_length: int | None = None, max_gen_toks: int = 256, pack: bool = True,
                 batch_size: Any = None, max_batch_size: Any = None, device: Any = None, seed: int = 0):
        super().__init__()
        del max_batch_size, device
        if jax.process_count() > 1:
            raise NotImplementedError("the glm_jax lm-eval model runs in one process (all its local devices); "
                                      "several processes are not supported yet")
        self.mesh = sharding.make_mesh(config.MeshConfig(data=int(data), fsdp=int(fsdp), tensor=int(tensor)))
        loaded = weights.load(workdir=workdir, step=None if step is None else int(step), hf=hf, tokenizer=tokenizer,
                              mesh=self.mesh)
        self.params, self.cfg, self.run, self.vocab = loaded.params, loaded.cfg, loaded.run, loaded.vocab
        self.source = loaded.source
        self._max_length = int(max_length or self.cfg.max_seq_len)
        self._max_gen_toks = int(max_gen_toks)
        self.pack = bool(pack)
        self.seed = int(seed)
        per = _batch_devices(self.mesh)
        asked = int(batch_size) if str(batch_size).isdigit() else 0
        self.rows = max(per, -(-asked // per) * per)
        self.specials = dict(self.vocab.specials)
        self.specials["<|endoftext|>"] = self.vocab.special_id("<|endoftext|>")
        self._special_ids = set(self.specials.values())
        self._special_re = re.compile("|".join(re.escape(s) for s in sorted(self.specials, key=len, reverse=True)))
        self.end_ids = [self.vocab.special_id(t) for t in END_TOKENS]

    # -- tokenization -------------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.specials["<|endoftext|>"]

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """Text -> ids; special-token names in the text become those tokens (as HF tokenizers do)."""
        ids, pos = [], 0
        for m in self._special_re.finditer(string):
            if m.start() > pos:
                ids += self.vocab.encode(string[pos:m.start()])
            ids.append(self.specials[m.group()])
            pos = m.end()
        if pos < len(string):
            ids += self.vocab.encode(string[pos:])
        return [int(i) for i in ids]

    def tok_decode(self, ids) -> str:
        """Ids -> text without special tokens (lm-eval's hf backend decodes with skip_special_tokens)."""
        kept = [int(i) for i in ids if int(i) not in self._special_ids]
        return self.vocab.decode(kept) if kept else ""

    @property
    def tokenizer_name(self) -> str:
        return f"glm_jax-{getattr(self.vocab, 'fingerprint', type(self.vocab).__name__)}"

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return "glm4: [gMASK]<sop>{<|system|>\\n...}<|user|>\\n...<|assistant|>\\n..." if chat_template else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Turns in GLM-4's layout (glm_jax/data/chat.py), as text; ends with `<|assistant|>` when
        `add_generation_prompt`, else continues the last (assistant) message."""
        out = "[gMASK]<sop>"
        for i, m in enumerate(chat_history):
            role = m.get("role")
            if role not in chat.ROLES:
                raise RequestError(f"chat message {i}: role {role!r} is not one of {chat.ROLES}")
            text = "\n" + chat.system_text(m["content"], []) if role == "system" else chat.turn_text(m)
            out += f"<|{role}|>" + text
        return out + ("<|assistant|>" if add_generation_prompt else "")

    # -- log-likelihoods ------------------------------------------------------------------------

    def _score(self, token_requests, names) -> tuple[np.ndarray, np.ndarray]:
        return scoring.score(self.params, self.cfg, token_requests, self.mesh, self.max_length, self.rows,
                             packed=self.pack, names=names, run=self.run)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        names = [f"loglikelihood request {i} (context ...{ctx[-40:]!r}, continuation {cont[:40]!r})"
                 for i, ((ctx, cont), _, _) in enumerate(requests)]
        logprob, greedy = self._score([(c, x) for _, c, x in requests], names)
        out = [(float(lp), bool(g)) for lp, g in zip(logprob, greedy)]
        for (pair, _, _), answer in zip(requests, out):
            if pair is not None:
                self.cache_hook.add_partial("loglikelihood", pair, answer)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for i, req in enumerate(requests):
            (text,) = req.args
            for w in lm_utils.get_rolling_token_windows(token_list=self.tok_encode(text),
                                                        prefix_token=self.prefix_token_id,
                                                        max_seq_len=self.max_length, context_len=1):
                windows.append(lm_utils.make_disjoint_window(w))
                owner.append(i)
        names = [f"loglikelihood_rolling request {i}, window {k}" for k, i in enumerate(owner)]
        logprob, _ = self._score(windows, names) if windows else (np.zeros(0), None)
        totals = np.zeros(len(requests))
        np.add.at(totals, np.asarray(owner, int), logprob)
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), float(total))
        return [float(t) for t in totals]

    # -- generation -----------------------------------------------------------------------------

    def _generation_job(self, i: int, req) -> dict:
        context, gen_kwargs = req.args
        name = f"generate_until request {i} (task {getattr(req, 'task_name', None)!r}, doc {getattr(req, 'doc_id', None)})"
        gen_kwargs = dict(gen_kwargs or {})
        if not gen_kwargs.get("until"):
            raise RequestError(f"{name}: no stop strings (gen_kwargs `until` is {gen_kwargs.get('until')!r}); give "
                               f"the task's generation_kwargs an `until` list so generation knows where an answer "
                               f"ends")
        kw = dict(normalize_gen_kwargs(gen_kwargs, self.max_gen_toks))
        until = handle_stop_sequences(kw.pop("until"), eos="<|endoftext|>")
        max_gen = int(kw.pop("max_gen_toks"))
        s = {k: kw.pop(k) for k in SAMPLING_KWARGS if k in kw}
        if kw:
            raise RequestError(f"{name}: generation kwargs {sorted(kw)} are not supported (known: until, "
                               f"max_gen_toks, {', '.join(SAMPLING_KWARGS)})")
        ids = self.tok_encode(context) or [self.prefix_token_id]
        if len(ids) + max_gen > self.max_length:
            raise RequestError(f"{name}: the prompt is {len(ids)} tokens; with max_gen_toks={max_gen} that is more "
                               f"than the model's context of {self.max_length} tokens. Use fewer few-shot examples "
                               f"or a smaller max_gen_toks (lm-eval's hf backend would silently cut the prompt)")
        temperature = float(s.get("temperature") or 0.0) if s.get("do_sample") else 0.0
        how = sampling.Sampling(temperature, int(s.get("top_k") or 0), float(s.get("top_p") or 1.0))
        return {"i": i, "ids": ids, "until": [u for u in until if u], "max_gen": max_gen, "sampling": how,
                "args": req.args}

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        jobs = [self._generation_job(i, req) for i, req in enumerate(requests)]  # every request checked first
        groups: dict = {}
        for job in jobs:
            groups.setdefault((job["max_gen"], job["sampling"]), []).append(job)
        out: list[str | None] = [None] * len(jobs)
        bar = tqdm(total=len(jobs), desc="generate_until", disable=disable_tqdm)
        key = jax.random.key(self.seed)
        for (max_gen, how), group in groups.items():
            group.sort(key=lambda j: (-len(j["ids"]), j["i"]))
            for start in range(0, len(group), self.rows):
                batch = group[start:start + self.rows]
                prompt_len = scoring.row_length(len(batch[0]["ids"]), self.max_length)

                def should_stop(r, toks, batch=batch):
                    text = self.tok_decode(toks)
                    return any(u in text for u in batch[r]["until"])

                key, sub = jax.random.split(key)
                with jax.set_mesh(self.mesh):
                    toks = sampling.generate(self.params, self.cfg, [j["ids"] for j in batch], max_gen, how,
                                             stop_ids=self.end_ids, key=sub, should_stop=should_stop, rows=self.rows,
                                             prompt_len=prompt_len, run=self.run)
                for job, t in zip(batch, toks):
                    text = postprocess_generated_text(self.tok_decode(t), job["until"], None)
                    out[job["i"]] = text
                    self.cache_hook.add_partial("generate_until", job["args"], text)
                bar.update(len(batch))
        bar.close()
        return out
