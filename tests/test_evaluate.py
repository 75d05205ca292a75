import pytest
import torch

from longrecall.evaluate import EvalAccumulator, distance_bucket, evaluate, evaluate_policy
from longrecall.models import LanguageModel
from longrecall.registry import POLICIES
from longrecall.tasks.base import Batch
from longrecall.tasks.mqar import MQAR


def test_distance_buckets():
    assert ([distance_bucket(d) for d in (0, 1, 2, 3, 4, 7, 8, 300)]
            == ["0", "1", "2-3", "2-3", "4-7", "4-7", "8-15", "256-511"])


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


# ----------------------------------------------------------------------------- under a KV-cache policy


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-layer attention model trained briefly on MQAR (well above chance), and its held-out batch."""
    from longrecall.checkpoint import load_weights
    from longrecall.config import TrainConfig
    from longrecall.train import eval_batches, make_model, make_task, train

    out = tmp_path_factory.mktemp("model")
    config = TrainConfig(layers=["attention", "attention"], d_model=32, task="mqar",
                         task_kwargs=dict(vocab_size=32, seq_len=32, num_kv_pairs=4), steps=120, batch_size=32,
                         eval_every=120, eval_examples=48, short_conv=4, lr=3e-3, warmup_steps=10, threads=1,
                         out_dir=str(out))
    train(config, progress=False, log=lambda *a: None)
    model = make_model(config, make_task(config).vocab_size)
    load_weights(out, model)
    return model, eval_batches(config)[0]


def test_policy_evaluation_without_budget_matches_evaluate(trained):
    model, batch = trained
    first = (batch.targets != -100).float().argmax(1)
    assert first.min() < first.max()  # MQAR: examples start their questions at different positions
    reference = evaluate(model, batch, batch_size=16)
    assert reference["accuracy"] > 0.15  # trained: well above chance (1/16)
    for policy in (None, POLICIES.get("full")(), POLICIES.get("full")(mode="prefill")):
        out = evaluate_policy(model, batch, policy, batch_size=16)
        assert out["accuracy"] == reference["accuracy"]
        assert out["by_distance"] == reference["by_distance"] and out["by_slice"] == reference["by_slice"]
        assert out["scored"] == reference["scored"] and abs(out["loss"] - reference["loss"]) < 1e-4
        assert out["state_bytes_end"] == reference["state_bytes"]["32"]  # the whole cache at T
        assert out["state_bytes"] < out["state_bytes_end"]  # after the context only
        assert out["budget_tokens"] is None and out["resident_bytes"] is None and out["protocol"]
    assert all(b.mixer.kv_policy is None for b in model.blocks)  # the model is left as it was


def test_tiny_budget_changes_accuracy_and_drops_bytes(trained):
    model, batch = trained
    full = evaluate_policy(model, batch, None)
    for mode in ("step", "prefill"):
        tiny = evaluate_policy(model, batch, POLICIES.get("window")(budget=1, mode=mode))
        assert tiny["budget_tokens"] == 1 and tiny["accuracy"] != full["accuracy"]
        assert tiny["state_bytes"] < full["state_bytes"]
        assert tiny["split"] == ("per_example" if mode == "prefill" else "batch_min")
    step = evaluate_policy(model, batch, POLICIES.get("window")(budget=1))
    assert step["state_bytes_end"] < full["state_bytes_end"] / 4  # step mode stays within the budget
    ratio = evaluate_policy(model, batch, POLICIES.get("window")(budget=0.25))
    assert ratio["budget_tokens"] == 8 and ratio["context_len"] == 32  # a fraction of the sequence length


@pytest.mark.parametrize("mode", ["step", "prefill"])
def test_each_example_is_evaluated_from_its_own_context(trained, mode):
    """Batch grouping (per split point in prefill mode, at the batch minimum in step mode) gives what
    each example gets alone, with its context exactly the tokens before its first scored position."""
    model, batch = trained
    batch = batch[:12]
    policy = POLICIES.get("h2o")(budget=4, mode=mode)
    together = evaluate_policy(model, batch, policy, batch_size=5)
    alone = [evaluate_policy(model, batch[i : i + 1], policy) for i in range(len(batch))]
    assert together["scored"] == sum(a["scored"] for a in alone)
    correct = sum(round(a["accuracy"] * a["scored"]) for a in alone)
    assert round(together["accuracy"] * together["scored"]) == correct
    assert together["state_bytes"] == round(sum(a["state_bytes"] for a in alone) / len(alone))


def test_resident_bytes_of_a_retrieval_policy(trained):
    """A policy that keeps part of its cache off the device reports resident next to total bytes."""
    from dataclasses import dataclass

    from longrecall.policies.base import Policy
    from longrecall.protocol import state_nbytes

    @dataclass
    class Offloading(Policy):  # not registered: keeps everything, a quarter of it resident
        bounded = False

        def resident_bytes(self, state) -> int:
            return state_nbytes(state) // 4

    model, batch = trained
    out = evaluate_policy(model, batch[:8], Offloading())
    plain = evaluate_policy(model, batch[:8], None)
    assert out["accuracy"] == plain["accuracy"] and out["state_bytes_end"] == plain["state_bytes_end"]
    assert 0 < out["resident_bytes"] < out["state_bytes"] and out["resident_bytes_end"] < out["state_bytes_end"]
