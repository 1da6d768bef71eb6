"""The BM25 sparse encoder: deterministic, tokenizes ids usefully, saturates term frequency."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ctxpipe.core.settings import PROJECT_ROOT
from ctxpipe.storage.semantic.sparse import Bm25Encoder, token_index

ENC = Bm25Encoder()


def test_tokenizer_lowercases_splits_ids_and_drops_stopwords() -> None:
    assert ENC.tokenize("The account ACC-99417-ZQ is BLOCKED, naïve_user!") == [
        "account", "acc", "99417", "zq", "blocked", "naïve", "user",
    ]


def test_indices_are_stable_across_processes() -> None:
    # Python's hash() is salted per process; ours must not be.
    out = subprocess.run(
        [sys.executable, "-c", "from ctxpipe.storage.semantic.sparse import token_index; print(token_index('invoice'))"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    assert int(out) == token_index("invoice")
    assert 0 <= token_index("invoice") < 2**32


def test_document_vector_is_sorted_unique_with_saturating_tf() -> None:
    emb = ENC.embed_document("refund refund refund policy")
    assert emb.indices == sorted(set(emb.indices)) and len(emb) == 2
    weights = dict(zip(emb.indices, emb.values, strict=True))
    refund, policy = weights[token_index("refund")], weights[token_index("policy")]
    assert policy < refund < 3 * policy  # more occurrences help, with diminishing returns
    assert refund < ENC.k1 + 1  # the BM25 TF bound


def test_longer_documents_weigh_a_term_less() -> None:
    short = ENC.embed_document("refund")
    long = ENC.embed_document("refund " + " ".join(f"w{i}" for i in range(500)))
    i = token_index("refund")
    assert dict(zip(long.indices, long.values, strict=True))[i] < short.values[0]


def test_query_vector_has_unit_weights() -> None:
    emb = ENC.embed_query("refund refund the policy")
    assert len(emb) == 2 and emb.values == [1.0, 1.0]


def test_empty_and_stopword_only_text() -> None:
    assert len(ENC.embed_document("")) == 0
    assert len(ENC.embed_query("the and of")) == 0


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        Bm25Encoder(b=1.5)
