"""Log-likelihood requests packed many to a row score exactly as one request per row, on any mesh."""

import numpy as np
import pytest

from glm_jax.eval import scoring


def _scored(batch, request):
    """[(row, position, token)] that score `request`."""
    a, e = batch.arrays, batch.score_request == request
    return list(zip(a["score_row"][e].tolist(), a["score_pos"][e].tolist(), a["score_token"][e].tolist()))


def test_pack_lays_requests_out_as_segments():
    reqs = [([1, 2, 3], [4]), ([5] * 20, [6, 7]), ([8], [9, 10, 11]), ([12] * 40, [13]), ([1, 2, 3], [7])]
    (batch,) = scoring.pack(reqs, max_len=64, rows=2)
    a = batch.arrays
    assert a["tokens"].shape == (2, 64)  # 40 tokens -> the 64 bucket
    # context 20 + continuation 2: reads 21 tokens as one segment, scores its last 2 positions
    (r, p, t), last = _scored(batch, 1)
    seg = a["segment_ids"][r] == a["segment_ids"][r, p]
    assert a["tokens"][r][seg].tolist() == [5] * 20 + [6] and a["positions"][r][seg].tolist() == list(range(21))
    assert (t, last[2], last[1] - p) == (6, 7, 1) and a["positions"][r, last[1]] == 20
    # the same question with another one-token answer is read once: same position, other target
    (r0, p0, t0), = _scored(batch, 0)
    assert _scored(batch, 4) == [(r0, p0, 7)] and t0 == 4
    segments = {(r, s) for r in range(2) for s in set(a["segment_ids"][r].tolist()) - {0}}
    assert len(segments) == 4 and max(len(a["segment_ids"][r][a["segment_ids"][r] > 0]) for r in range(2)) > 40
    single = scoring.pack(reqs, max_len=64, rows=2, packed=False)
    assert [int((b.arrays["segment_ids"].max(axis=1) > 0).sum()) for b in single] == [2, 2, 1]  # one per row


def test_request_longer_than_the_context_is_named():
    with pytest.raises(scoring.RequestError, match="request 1: the continuation has 70 tokens"):
        scoring.pack([([1], [2]), ([1], list(range(70)))], max_len=64, rows=1)


@pytest.mark.slow
@pytest.mark.parametrize("mesh", ["fsdp=8", "fsdp=4,tensor=2"])
def test_packed_scores_equal_one_request_per_row(debug_model, mesh):
    from lm_eval.api.instance import Instance

    from glm_jax.eval.harness import GLMJaxLM

    ckpt, _ = debug_model
    rng = np.random.default_rng(0)
    words = "the of pass key 床前 明月光 interpreter module 软件包 and run import".split()
    pairs = []
    for i in range(28):
        ctx = " ".join(rng.choice(words, int(rng.integers(1, 60))))
        cont = " " + " ".join(rng.choice(words, int(rng.integers(1, 6))))
        pairs.append((ctx, cont))
    reqs = [Instance("loglikelihood", {}, p, i, ("t", i, 1)) for i, p in enumerate(pairs)]
    packed = GLMJaxLM.create_from_arg_string(f"workdir={ckpt},{mesh}", {"batch_size": 8})
    single = GLMJaxLM.create_from_arg_string(f"workdir={ckpt},{mesh},pack=false", {"batch_size": 8})
    a, b = packed.loglikelihood(reqs), single.loglikelihood(reqs)
    np.testing.assert_allclose([x[0] for x in a], [x[0] for x in b], atol=1e-5, rtol=0)
    assert [x[1] for x in a] == [x[1] for x in b]
    token_reqs = [packed._encode_pair(c, x) for c, x in pairs]
    assert len(scoring.pack(token_reqs, packed.max_length, packed.rows)) < len(
        scoring.pack(token_reqs, packed.max_length, packed.rows, packed=False))
