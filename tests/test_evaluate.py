import torch

from longrecall.evaluate import EvalAccumulator, distance_bucket, evaluate
from longrecall.models import LanguageModel
from longrecall.tasks.base import Batch
from longrecall.tasks.mqar import MQAR


def test_distance_buckets():
    assert [distance_bucket(d) for d in (0, 1, 2, 3, 4, 7, 8, 300)] == ["0", "1", "2-3", "2-3", "4-7", "4-7", "8-15", "256-511"]


def test_accumulator_counts_overall_slice_and_distance():
    targets = torch.tensor([[-100, 5, -100, 7], [3, -100, -100, 4]])
    distance = torch.tensor([[-1, 1, -1, 6], [2, -1, -1, 9]])
    batch = Batch(torch.zeros(2, 4, dtype=torch.long), targets, distance, {"pairs": torch.tensor([1, 2])})
    predictions = torch.tensor([[0, 5, 0, 0], [3, 0, 0, 4]])
    acc = EvalAccumulator()
    acc.add(predictions, batch)
    result = acc.result()
    assert result["accuracy"] == 3 / 4 and result["scored"] == 4
    assert result["by_slice"]["pairs"] == {"1": {"accuracy": 0.5, "scored": 2}, "2": {"accuracy": 1.0, "scored": 2}}
    assert result["by_distance"] == {
        "1": {"accuracy": 1.0, "scored": 1},
        "2-3": {"accuracy": 1.0, "scored": 1},
        "4-7": {"accuracy": 0.0, "scored": 1},
        "8-15": {"accuracy": 1.0, "scored": 1},
    }


def test_evaluate_several_lengths_and_pairs():
    model = LanguageModel(64, 16, ["attention"])
    batches = [MQAR(vocab_size=64, seq_len=16, num_kv_pairs=2).build(8, 0),
               MQAR(vocab_size=64, seq_len=32, num_kv_pairs=4).build(8, 1)]
    result = evaluate(model, batches, batch_size=3)
    assert set(result["by_slice"]["num_kv_pairs"]) == {"2", "4"}
    assert set(result["state_bytes"]) == {"16", "32"}
    assert result["state_bytes"]["32"] > result["state_bytes"]["16"]
    assert result["scored"] == 8 * 2 + 8 * 4
    assert 0 <= result["accuracy"] <= 1
