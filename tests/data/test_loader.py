"""The grain loader: contract, packing exactness (token 0 included), model parity, resume, row streams
independent of how rows are split among hosts (elastic resume), errors."""

import collections
import json
import os
import textwrap

import jax
import numpy as np
import pytest

from glm_jax import model
from glm_jax.config import ConfigError
from glm_jax.data import chat, loader, tasks
from glm_jax.data.errors import DataError
from glm_jax.data.tokenizer import bundled_tokenizer
from tests import cli
from tests.conftest import REPO, tiny_model
from tests.data.conftest import corpus_texts, write_glm4_sized_tiktoken

SEQ = 64


@pytest.fixture(scope="module")
def pack_task(tmp_path_factory):
    """Real documents of many lengths (some > SEQ, so they are split), several containing token 0 ("!")."""
    texts = corpus_texts("zh")[:30] + [t[:400] for t in corpus_texts("code")[:10]] + ["!", "!! 你好!", "a!b"]
    path = tmp_path_factory.mktemp("pack") / "docs.jsonl"
    path.write_text("".join(json.dumps({"body": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    tasks.register_text_task("test_pack_docs", str(path), text_key="body")
    vocab = bundled_tokenizer()
    docs = [vocab.encode(t) + [vocab.eos_id] for t in texts]
    assert sum(d.count(0) for d in docs) >= 4 and max(map(len, docs)) > 3 * SEQ
    return docs


def _pieces(docs, seq_len):
    """{piece tokens: (targets, loss_mask)} for every piece, plus the multiset of pieces."""
    expect, counts = {}, collections.Counter()
    for d in docs:
        for s in range(0, len(d), seq_len):
            e = min(s + seq_len, len(d))
            tgt = [d[i + 1] if i + 1 < len(d) else 0 for i in range(s, e)]
            msk = [1.0 if i + 1 < len(d) else 0.0 for i in range(s, e)]
            expect[tuple(d[s:e])] = (tgt, msk)
            counts[tuple(d[s:e])] += 1
    return expect, counts


def _segments(rows):
    """Yields (tokens, targets, positions, loss_mask) of every document segment in the rows."""
    for r in rows:
        seg = r["segment_ids"]
        assert np.all(r["loss_mask"][seg == 0] == 0)
        for k in np.unique(seg[seg > 0]):
            sel = np.flatnonzero(seg == k)
            assert np.array_equal(sel, np.arange(sel[0], sel[-1] + 1)), "a segment is contiguous"
            yield r["tokens"][sel], r["targets"][sel], r["positions"][sel], r["loss_mask"][sel]


def _epoch_rows(cfg, rows=None):
    """Every packed row of one epoch of the given row streams (default: all train.batch_size of them)."""
    streams = loader.task_streams(cfg)
    out = []
    for r in range(cfg.train.batch_size) if rows is None else rows:
        out += list(loader.pack(loader.row_examples(cfg, streams, r, num_epochs=1), cfg, r))
    return out


def test_every_token_of_every_document_appears_exactly_once_per_epoch(data_cfg, pack_task):
    cfg = data_cfg(f"train.seq_len={SEQ}", "data.mixture='test_pack_docs'")
    rows = _epoch_rows(cfg)
    expect, counts = _pieces(pack_task, SEQ)
    seen = collections.Counter()
    for tokens, targets, positions, mask in _segments(rows):
        key = tuple(tokens.tolist())
        seen[key] += 1
        assert positions.tolist() == list(range(len(tokens)))
        assert targets.tolist() == expect[key][0] and mask.tolist() == expect[key][1]
    assert seen == counts
    assert sum(int((r["tokens"][r["segment_ids"] > 0] == 0).sum()) for r in rows) == sum(d.count(0) for d in pack_task)
    assert all(r["tokens"].shape == (SEQ,) for r in rows)


def test_batches_follow_the_contract(data_cfg):
    cfg = data_cfg()
    it = loader.make_iterator(cfg, rows=range(cfg.train.batch_size))
    fill = []
    for _ in range(3):
        b = next(it)
        assert sorted(b) == sorted(loader.FEATURES)
        for k, v in b.items():
            assert v.shape == (cfg.train.batch_size, cfg.train.seq_len), k
            assert v.dtype == (np.float32 if k == "loss_mask" else np.int32), k
        seg, pos = b["segment_ids"], b["positions"]
        same = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
        assert np.all(b["targets"][:, :-1][same] == b["tokens"][:, 1:][same])  # next token, same document
        assert np.all(pos[:, 1:][same] == pos[:, :-1][same] + 1)
        assert np.all(pos[:, 1:][seg[:, 1:] != seg[:, :-1]] == 0)  # restart at each document
        assert set(np.unique(b["loss_mask"])) <= {0.0, 1.0} and np.all(b["loss_mask"][seg == 0] == 0)
        fill.append((seg > 0).mean())
        assert b["tokens"].max() < bundled_tokenizer().vocab_size
    assert np.mean(fill) > 0.9  # first-fit packing leaves little padding
    state = it.get_state()
    assert sorted(state, key=int) == [str(r) for r in range(cfg.train.batch_size)]
    assert all(len(json.dumps(v)) < 400 for v in state.values())  # a few hundred bytes per row


def test_packed_logits_equal_per_document_logits(data_cfg, pack_task):
    """Rows from the loader through the model: each packed document's logits = the document run alone."""
    cfg = data_cfg(f"train.seq_len={SEQ}", "data.mixture='test_pack_docs'")
    row = max(_epoch_rows(cfg), key=lambda r: len(np.unique(r["segment_ids"])))
    assert len(np.unique(row["segment_ids"][row["segment_ids"] > 0])) >= 3
    mcfg = tiny_model(vocab_size=4096, max_seq_len=SEQ)
    params = model.init_params(mcfg, jax.random.key(0))
    fwd = jax.jit(lambda t, p, s: model.forward(params, t, mcfg, positions=p, segment_ids=s))
    packed = fwd(row["tokens"][None], row["positions"][None], row["segment_ids"][None])[0]
    for k in np.unique(row["segment_ids"][row["segment_ids"] > 0]):
        sel = row["segment_ids"] == k
        n = int(sel.sum())
        alone = np.zeros(SEQ, np.int32)
        alone[:n] = row["tokens"][sel]
        seg = (np.arange(SEQ) < n).astype(np.int32)
        ref = fwd(alone[None], np.arange(SEQ, dtype=np.int32)[None], seg[None])[0, :n]
        np.testing.assert_allclose(packed[sel], ref, atol=2e-5, rtol=1e-5)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for k in loader.FEATURES:
            np.testing.assert_array_equal(x[k], y[k])


def test_resume_gives_identical_batches_via_orbax(data_cfg, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    import grain

    cfg = data_cfg()
    it = loader.make_iterator(cfg, rows=range(8))
    _take(it, 3)
    mngr = ocp.CheckpointManager(str(tmp_path / "ckpt"))
    mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    want = _take(it, 4)
    fresh = loader.make_iterator(cfg, rows=range(8))
    mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    _assert_same(_take(fresh, 4), want)
    assert not np.array_equal(want[0]["tokens"], want[1]["tokens"])


def test_resume_in_a_new_process(data_cfg, cache_dir, tmp_path):
    cfg = data_cfg()
    it = loader.make_iterator(cfg, rows=[1, 6])
    _take(it, 2)
    (tmp_path / "state.json").write_text(json.dumps(it.get_state()))
    want = _take(it, 3)
    script = textwrap.dedent(f"""
        import json, numpy as np
        from glm_jax import config
        from glm_jax.data import loader
        cfg = config.load("configs/debug.py", ["data.cache_dir={cache_dir!r}"])
        it = loader.make_iterator(cfg, rows=[1, 6], build_missing=False)
        it.set_state(json.load(open({str(tmp_path / 'state.json')!r})))
        bs = [next(it) for _ in range(3)]
        np.savez({str(tmp_path / 'out.npz')!r}, **{{f"{{k}}_{{i}}": b[k] for i, b in enumerate(bs) for k in b}})
    """)
    cached = sorted(os.listdir(cache_dir))
    cli.run("-c", script, timeout=300)
    assert sorted(os.listdir(cache_dir)) == cached  # the new process reuses the tokenized cache
    out = np.load(tmp_path / "out.npz")
    _assert_same([{k: out[f"{k}_{i}"] for k in loader.FEATURES} for i in range(3)], want)


def _global_order(cfg, streams, n):
    """The first n pieces (first 8 tokens) of the task's global sequence: element k*B + r is row r's k-th."""
    rows = cfg.train.batch_size
    per_row = [loader.row_examples(cfg, streams, r) for r in range(rows)]
    return [tuple(per_row[j % rows][j // rows]["tokens"][:8]) for j in range(n)]


def test_stream_is_infinite_and_reshuffled_per_epoch_from_the_seed(data_cfg, pack_task):
    cfg = data_cfg(f"train.seq_len={SEQ}", "data.mixture='test_pack_docs'")
    streams = loader.task_streams(cfg)
    n = len(streams[0].pieces)
    order = _global_order(cfg, streams, 3 * n)
    epochs = [order[i * n:(i + 1) * n] for i in range(3)]
    assert all(sorted(e) == sorted(epochs[0]) for e in epochs)  # each epoch is the whole data once
    assert epochs[0] != epochs[1] != epochs[2]  # in a new order
    assert _global_order(cfg, streams, n) == epochs[0]  # deterministic from the seed
    other = data_cfg(f"train.seq_len={SEQ}", "data.mixture='test_pack_docs'", "data.seed=7")
    assert _global_order(other, streams, n) != epochs[0]
    row0 = [{order[j] for j in range(i * n, (i + 1) * n) if j % cfg.train.batch_size == 0} for i in range(2)]
    assert row0[0] != row0[1]  # a row's share of the pieces changes from epoch to epoch


def test_row_streams_split_the_pieces_disjointly_and_differ(data_cfg, pack_task):
    cfg = data_cfg(f"train.seq_len={SEQ}", "data.mixture='test_pack_docs'")
    _, counts = _pieces(pack_task, SEQ)
    seen = [collections.Counter(tuple(s[0].tolist()) for s in _segments(_epoch_rows(cfg, [r])))
            for r in range(cfg.train.batch_size)]
    assert all(seen)
    assert sum(seen, collections.Counter()) == counts  # every piece in exactly one row stream per epoch
    assert len({tuple(sorted(c)) for c in seen}) == len(seen)


def test_rows_do_not_depend_on_how_they_are_split_among_iterators(data_cfg):
    cfg = data_cfg()
    whole = _take(loader.make_iterator(cfg, rows=range(8)), 3)
    halves = [_take(loader.make_iterator(cfg, rows=rows), 3) for rows in (range(4), range(4, 8))]
    _assert_same(whole, [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*halves)])
    picked = _take(loader.make_iterator(cfg, rows=[6, 1]), 3)  # any rows, any order, any host
    _assert_same(picked, [{k: v[[6, 1]] for k, v in b.items()} for b in whole])
    again = _take(loader.make_iterator(cfg, rows=[6]), 3)  # a row read by two hosts is the same row
    _assert_same(again, [{k: v[:1] for k, v in b.items()} for b in picked])
    assert len({b["tokens"][r].tobytes() for b in whole for r in range(8)}) == 24  # rows differ


def _split_state(iterators):
    """The global data state: the union of every iterator's {row: state} (what N processes save)."""
    return loader.merge_states([it.get_state() for it in iterators])


def test_state_saved_by_two_iterators_resumes_on_one_and_back(data_cfg):
    """2 -> 1 and 1 -> 2 processes: the resumed stream continues exactly as the uninterrupted one."""
    cfg = data_cfg()
    ref = loader.make_iterator(cfg, rows=range(8))
    want = _take(ref, 5)
    two = [loader.make_iterator(cfg, rows=rows) for rows in ([0, 2, 4, 6], [1, 3, 5, 7])]
    for it in two:
        _take(it, 2)
    one = loader.make_iterator(cfg, rows=range(8))
    one.set_state(json.loads(json.dumps(_split_state(two))))  # through JSON, as a checkpoint stores it
    _assert_same(_take(one, 2), want[2:4])
    back = [loader.make_iterator(cfg, rows=rows) for rows in (range(5), range(5, 8))]  # 1 -> 2, uneven
    state = one.get_state()
    for it in back:
        it.set_state(state)
    got = [_take(it, 1)[0] for it in back]
    _assert_same([{k: np.concatenate([g[k] for g in got]) for k in loader.FEATURES}], want[4:5])
    shared = [loader.make_iterator(cfg, rows=rows) for rows in ([0, 1], [1, 2])]  # row 1 on two hosts
    _take(shared[0], 1)
    _take(shared[1], 1)
    assert sorted(loader.merge_states([it.get_state() for it in shared])) == ["0", "1", "2"]
    _take(shared[1], 1)  # one host a step ahead: its row 1 state differs
    with pytest.raises(ValueError, match="different states for data row 1"):
        loader.merge_states([it.get_state() for it in shared])


def test_mixture_samples_tasks_by_rate(data_cfg):
    cfg = data_cfg()
    streams = loader.task_streams(cfg)
    rates = {s.cached.name: s.rate for s in streams}
    assert rates == {"bundled_zh": 0.45, "bundled_en": 0.35, "bundled_code": 0.20}
    ds = loader.row_examples(cfg, streams, 5)
    vocab = bundled_tokenizer()
    zh = sum(any("\u4e00" <= ch <= "\u9fff" for ch in vocab.decode(ds[i]["tokens"].tolist())) for i in range(400))
    assert 0.35 < zh / 400 < 0.55  # only bundled_zh (rate 0.45) is Chinese text


def test_chat_sft_rows_carry_the_rendered_assistant_mask(data_cfg):
    """Each packed conversation: targets = its next ids, loss_mask = chat.render's label mask shifted by one."""
    cfg = data_cfg("train.seq_len=1024", "train.batch_size=2", "data.mixture='bundled_chat_sft'")
    vocab = bundled_tokenizer()
    with open(os.path.join(REPO, "data", "sft", "chat_sft.jsonl"), encoding="utf-8") as f:
        rendered = {tuple(ids.tolist()): (ids, mask) for ids, mask in
                    (chat.render(json.loads(line), vocab) for line in f)}
    it = loader.make_iterator(cfg, rows=[0, 1])
    seen = 0
    for _ in range(3):
        b = next(it)
        for tokens, targets, positions, mask in _segments([{k: v[r] for k, v in b.items()} for r in range(2)]):
            ids, label = rendered[tuple(tokens.tolist())]
            assert targets.tolist() == ids[1:].tolist() + [0]
            assert mask.tolist() == label[1:].tolist() + [0]
            seen += 1
    assert seen >= 6


def test_a_task_smaller_than_the_batch_still_feeds_every_row(data_cfg):
    """33 training conversations (36, of which every 10th is held out), 64 rows: row r starts at
    position r of the repeated sequence (epoch 1 for r >= 33)."""
    cfg = data_cfg("train.seq_len=1024", "train.batch_size=64", "data.mixture='bundled_chat_sft'")
    streams = loader.task_streams(cfg)
    n = 36 - 36 // 10
    assert len(streams[0].pieces) == n
    firsts = [tuple(loader.row_examples(cfg, streams, r)[0]["tokens"].tolist()) for r in range(64)]
    assert len(set(firsts[:n])) == n  # epoch 0: every conversation once, spread over rows 0..n-1
    assert set(firsts[n:]) <= set(firsts[:n]) and len(set(firsts[n:])) == 64 - n  # rows n..63: epoch 1
    b = next(loader.make_iterator(cfg, rows=[0, 63]))
    assert b["tokens"].shape == (2, 1024) and (b["segment_ids"].max(axis=1) >= 1).all()


def test_data_tokenizer_retokenizes_the_tasks(data_cfg, pack_task, tmp_path):
    """`data.tokenizer` = a GLM-4-sized tiktoken file: the same task, tokenized with that file."""
    from glm_jax.data.tokenizer import load_tokenizer

    path = write_glm4_sized_tiktoken(tmp_path / "tokenizer.model")
    cfg = data_cfg(f"train.seq_len={SEQ}", "data.mixture='test_pack_docs'", f"data.tokenizer={path!r}",
                   "model.vocab_size=151552")
    vocab = load_tokenizer(path)
    streams = loader.task_streams(cfg)
    assert streams[0].vocab == vocab and streams[0].cached.name.startswith("test_pack_docs#")
    texts = [bundled_tokenizer().decode(d[:-1]) for d in pack_task]
    docs = [vocab.encode(t) + [vocab.special_id("<|endoftext|>")] for t in texts]
    assert docs[0][-1] == 151329
    _, counts = _pieces(docs, SEQ)
    assert collections.Counter(tuple(s[0].tolist()) for s in _segments(_epoch_rows(cfg))) == counts


def test_bad_input_is_a_clear_error(data_cfg, tmp_path):
    with pytest.raises(ConfigError, match="data.mixture.*unknown task or mixture 'no_such_mix'"):
        loader.make_iterator(data_cfg("data.mixture='no_such_mix'"), rows=[0])
    with pytest.raises(DataError, match="mixture 'bad_mix' names task 'no_such_task'"):
        tasks.register_mixture("bad_mix", [("bundled_zh", 1.0), ("no_such_task", 1.0)])
    with pytest.raises(DataError, match="no file matches .*missing.jsonl"):
        tasks.register_text_task("test_missing", str(tmp_path / "missing.jsonl"))
    with pytest.raises(ConfigError, match="data.tokenizer.*nope.model.*does not exist"):
        loader.make_iterator(data_cfg(f"data.tokenizer={str(tmp_path / 'nope.model')!r}"), rows=[0])
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "fine"}\n{"txt": "typo"}\n')
    tasks.register_text_task("test_bad_row", str(rows))
    with pytest.raises(DataError, match=r"rows.jsonl:2: row has no string field 'text'"):
        loader.make_iterator(data_cfg("data.mixture='test_bad_row'"), rows=[0])
    with pytest.raises(ConfigError, match=r"train.seq_len.*16 is shorter than example \d+ of task 'bundled_chat_sft'"):
        loader.make_iterator(data_cfg("train.seq_len=16", "data.mixture='bundled_chat_sft'"), rows=[0])
    with pytest.raises(ConfigError, match="model.vocab_size.*1024 is smaller than the vocabulary"):
        loader.make_iterator(data_cfg("model.vocab_size=1024"), rows=[0])
    with pytest.raises(ConfigError, match="data.num_workers.*set 0"):
        loader.make_iterator(data_cfg("data.num_workers=2"), rows=[0])
    for rows in ([], [8], [-1], [2, 2]):
        with pytest.raises(ValueError, match=r"rows=.* must be distinct global row indices in \[0, "
                                             r"train.batch_size=8\)"):
            loader.make_iterator(data_cfg(), rows=rows)
    it = loader.make_iterator(data_cfg(), rows=[3, 5])
    with pytest.raises(ValueError, match=r"no entry for rows \[5\] \(it holds rows \['0', '3'\]\).*train.batch_size"):
        it.set_state({k: v for k, v in loader.make_iterator(data_cfg(), rows=[0, 3]).get_state().items()})
