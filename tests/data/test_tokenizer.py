"""Tokenizers: lossless on the bundled corpus, exact special ids, tiktoken == HF tokenizers, bad files."""

import itertools

import numpy as np
import pytest
import seqio

from glm_jax.data import chat
from glm_jax.data import tokenizer as tok_lib
from glm_jax.data.errors import DataError
from tests.data.conftest import corpus_texts, write_glm4_sized_tiktoken

EXTRA = ["emoji 😀👍🏽 and 🇨🇳 flags", "混合 mixed 文本 with tabs\tand\r\nCRLF", "ümlaut naïve café",
         "   leading spaces",
         "def f(x):\n    return x ** 2  # 平方\n", "<|user|>[gMASK]<sop> typed as text", "!!!", ""]


@pytest.fixture(scope="module")
def bundled():
    return tok_lib.bundled_tokenizer()


@pytest.fixture(scope="module")
def corpus():
    return {name: corpus_texts(name) for name in ("zh", "en", "code")}


def test_bundled_tokenizer_is_a_seqio_vocabulary_of_debug_size(bundled, debug_cfg):
    assert isinstance(bundled, seqio.Vocabulary)
    assert bundled.num_ranks == 4086 and bundled.vocab_size == 4096 <= debug_cfg.model.vocab_size


@pytest.mark.parametrize("name", ["zh", "en", "code"])
def test_round_trip_on_bundled_corpus(bundled, corpus, name):
    texts = corpus[name] + EXTRA
    for text, ids in zip(texts, bundled.encode_batch(texts)):
        assert bundled.decode(ids) == text
        assert list(bundled.encode(text)) == ids  # seqio's interface and the batch path agree


def test_round_trip_through_seqio_tf_ops(bundled):
    tf = pytest.importorskip("tensorflow")
    for text in EXTRA[:4] + ["静夜思 床前明月光"]:
        ids = bundled.encode_tf(tf.constant(text))
        assert ids.dtype == tf.int32 and ids.numpy().tolist() == bundled.encode(text)
        assert bundled.decode_tf(ids).numpy().decode("utf-8") == text


def test_special_tokens_have_exact_ids_and_never_come_from_text(bundled, corpus):
    assert [bundled.special_id(t) for t in tok_lib.GLM_SPECIAL_TOKENS] == list(range(4086, 4096))
    assert bundled.eos_id == bundled.special_id("<|endoftext|>") == 4086
    texts = list(itertools.chain(*corpus.values())) + EXTRA + ["".join(tok_lib.GLM_SPECIAL_TOKENS)]
    assert max(max(ids, default=0) for ids in bundled.encode_batch(texts)) < bundled.num_ranks
    # Token 0 ("!") is an ordinary token that plain text produces.
    assert bundled.encode("!") == [0]


def test_released_glm4_size_puts_specials_at_151329(tmp_path):
    """A file with as many ranks as GLM-4's (151,329) gets specials 151329..151338, vocab fits 151552."""
    path = write_glm4_sized_tiktoken(tmp_path / "glm4_sized.tiktoken")
    vocab = tok_lib.load_tokenizer(str(path))
    assert isinstance(vocab, tok_lib.GLMTokenizer)
    assert [vocab.special_id(t) for t in tok_lib.GLM_SPECIAL_TOKENS] == list(range(151329, 151339))
    assert vocab.vocab_size == 151339 <= 151552
    assert vocab.decode(vocab.encode("GLM-4 你好")) == "GLM-4 你好"


def test_tiktoken_ids_equal_hf_tokenizers_loading_the_same_file(bundled, corpus):
    """A second well-kept BPE (HF tokenizers, via transformers' TikTokenConverter) on the same file."""
    convert = pytest.importorskip("transformers.convert_slow_tokenizer")
    hf = convert.TikTokenConverter(vocab_file=bundled.path, pattern=tok_lib.SPLIT_PATTERN,
                                   extra_special_tokens=list(tok_lib.GLM_SPECIAL_TOKENS)).converted()
    # HF matches added special tokens inside raw text; ours never does (tested above), so skip that text.
    texts = list(itertools.chain(*corpus.values())) + [t for t in EXTRA if "<|" not in t]
    theirs = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    ours = bundled.encode_batch(texts)
    assert sum(map(len, ours)) > 900_000
    mismatched = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    assert not mismatched, texts[mismatched[0]][:200]
    assert [hf.token_to_id(t) for t in tok_lib.GLM_SPECIAL_TOKENS] == list(range(4086, 4096))


def test_sentencepiece_chatglm3_format(tmp_path, corpus):
    spm = pytest.importorskip("sentencepiece")
    text = "\n".join(corpus["zh"][:30] + corpus["en"][:3])
    (tmp_path / "train.txt").write_text(text, encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(tmp_path / "train.txt"), model_prefix=str(tmp_path / "sp"),
                                   vocab_size=1200, model_type="bpe", character_coverage=0.98,
                                   byte_fallback=True, normalization_rule_name="identity",
                                   num_threads=1, minloglevel=2)
    vocab = tok_lib.load_tokenizer(str(tmp_path / "sp.model"))
    assert isinstance(vocab, tok_lib.ChatGLM3Tokenizer) and isinstance(vocab, seqio.SentencePieceVocabulary)
    assert [vocab.special_id(t) for t in tok_lib.CHATGLM3_SPECIAL_TOKENS] == list(range(1200, 1209))
    assert vocab.vocab_size == 1209
    sample = "床前明月光，疑是地上霜。 Python is simple."
    ids = vocab.encode(sample)
    assert max(ids) < 1200 and vocab.decode(ids) == sample
    assert vocab.decode([vocab.special_id("<|user|>"), *ids]) == "<|user|>" + sample
    tf = pytest.importorskip("tensorflow")
    assert vocab.encode_tf(tf.constant(sample)).numpy().tolist() == list(ids)  # tensorflow-text agrees
    # GLM-4 names resolve too, so the chat format renders with ChatGLM3's tokenizer.
    conv = {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "Hi"}]}
    rendered, mask = chat.render(conv, vocab)
    assert rendered[:2].tolist() == [vocab.special_id("[gMASK]"), vocab.specials["sop"]]
    assert rendered[-1] == vocab.eos_id and vocab.decode(rendered[mask > 0][:-1].tolist()) == "\nHi"


def test_bad_tokenizer_files_name_the_file(tmp_path):
    with pytest.raises(DataError, match="nope.model.*does not exist"):
        tok_lib.load_tokenizer(str(tmp_path / "nope.model"))
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("IQ== 0\nIg== 1\nnot-base64!! x\n")
    with pytest.raises(DataError, match=r"bad.tiktoken:3: expected `<base64 token> <rank>`"):
        tok_lib.GLMTokenizer(str(bad))
    gap = tmp_path / "gap.tiktoken"
    gap.write_text("IQ== 0\nIg== 2\n")
    with pytest.raises(DataError, match="ranks must be the distinct integers 0..1"):
        tok_lib.GLMTokenizer(str(gap))
    assert np.all(np.asarray(tok_lib.bundled_tokenizer().encode("ok")) >= 0)
