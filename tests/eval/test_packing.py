"""Log-likelihood requests packed many to a row score exactly as one request per row, on any mesh."""

import numpy as np
import pytest

from glm_jax.eval import scoring


def test_pack_lays_requests_out_as_segments():
    reqs = [([1, 2, 3], [4]), ([5] * 20, [6, 7]), ([8], [9, 10, 11]), ([12] * 40, [13])]
    batches = scoring.pack(reqs, max_len=64, rows=2)
    assert len(batches) == 1 and batches[0].arrays["tokens"].shape == (2, 64)  # 40 tokens -> the 64 bucket
    a = batches[0].arrays
    placed = {i: (r, s) for i, r, s in batches[0].where}
    assert sorted(placed) == [0, 1, 2, 3]
    r, s = placed[1]  # context 20 + continuation 2 -> reads 21 tokens, scores the last 2 targets
    seg = a["segment_ids"][r] == s
    assert a["tokens"][r][seg].tolist() == [5] * 20 + [6] and a["targets"][r][seg].tolist() == [5] * 19 + [6, 7]
    assert a["positions"][r][seg].tolist() == list(range(21)) and a["mask"][r][seg].tolist() == [0] * 19 + [1, 1]
    assert max(len({s for i, rr, s in batches[0].where if rr == row}) for row in (0, 1)) > 1  # many to a row
    single = scoring.pack(reqs, max_len=64, rows=2, packed=False)
    assert all(len({s for _, r, s in b.where}) == 1 for b in single) and len(single) == 2


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
