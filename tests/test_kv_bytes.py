"""Byte budgets (kv_bytes): parsing, the per-token cost of each policy, and the measured bytes fitting them."""

import pytest
import torch

import longrecall.policies  # noqa: F401  (registers the policies)
from longrecall.arena import load_spec, run_arena
from longrecall.evaluate import evaluate_policy
from longrecall.kv_bytes import parse_byte_budget, token_bytes, tokens_for_bytes
from longrecall.models import LanguageModel
from longrecall.registry import POLICIES
from longrecall.tasks.mqar import MQAR
from longrecall.validation import ArgumentError


def test_parse_byte_budgets():
    assert parse_byte_budget("32KiB") == 32768 and parse_byte_budget("4096B") == 4096
    assert parse_byte_budget("1.5MiB") == 1572864 and parse_byte_budget("10KB") == 10000
    for bad in ("32", "32 parsecs", 32, 0.5, None, "KiB"):
        assert parse_byte_budget(bad) is None
    with pytest.raises(ArgumentError, match="budget"):
        POLICIES.get("window")(budget="12 parsecs")
    with pytest.raises(ArgumentError, match="budget"):
        POLICIES.get("window")(budget="2KiB").resolve_budget(64)  # only a model can convert bytes


def test_token_bytes_count_keys_values_positions_and_statistics():
    window, h2o = POLICIES.get("window")(budget=4), POLICIES.get("h2o")(budget=4)
    assert token_bytes(window, 2, 16, torch.float32) == 2 * (2 * 16 * 4 + 4)
    assert token_bytes(h2o, 2, 16, torch.float32) == 2 * (2 * 16 * 4 + 4) + 2 * 4  # + its accumulated attention
    assert tokens_for_bytes(window, 10 * 264 + 16, [(2, 16, torch.float32)] * 2) == 5  # + the counters
    assert tokens_for_bytes(window, 10 * 264, [(2, 16, torch.float32)] * 2) == 4
    with pytest.raises(ArgumentError, match="at least one token"):
        tokens_for_bytes(window, 100, [(2, 16, torch.float32)])


@pytest.mark.parametrize("name", ["window", "h2o", "streaming"])
def test_measured_cache_fits_the_byte_budget(name):
    torch.manual_seed(0)
    model = LanguageModel(32, 32, ["attention", "attention"])  # no short conv: the caches are the whole state
    batch = MQAR(vocab_size=32, seq_len=64, num_kv_pairs=4).build(4, 0)
    budget = "6KiB"
    out = evaluate_policy(model, batch, POLICIES.get(name)(budget=budget))
    per_token = sum(token_bytes(POLICIES.get(name)(budget=1), 2, 16, torch.float32) for _ in range(2))
    assert out["budget_bytes"] == 6144 and out["budget_tokens"] == (6144 - 2 * 8) // per_token
    assert 6144 - per_token < out["state_bytes_end"] <= 6144  # step mode: the cache stays within the bytes


def test_same_bytes_fewer_tokens_for_a_policy_with_statistics():
    model = LanguageModel(32, 32, ["attention", "attention"])
    window = model.resolve_byte_budget(POLICIES.get("window")(budget="16KiB"))
    h2o = model.resolve_byte_budget(POLICIES.get("h2o")(budget="16KiB"))
    assert window.budget > h2o.budget > 0


def test_arena_takes_byte_budgets(tmp_path):
    spec = {"name": "kvb", "mixers": ["attention"], "tasks": [{"task": "mqar", "kwargs": {"vocab_size": 32,
            "num_kv_pairs": 2}}], "lengths": [16], "widths": [16], "seeds": [0],
            "train": {"steps": 4, "batch_size": 8, "eval_every": 4, "eval_examples": 16, "warmup_steps": 2,
                      "threads": 1}, "policies": ["window"], "budgets": ["1KiB", 0.5]}
    assert load_spec(spec).policy_plan[0]["budgets"] == ["1KiB", 0.5]
    with pytest.raises(Exception, match="bytes per sequence"):
        load_spec({**spec, "budgets": ["1 parsec"]})
    store = tmp_path / "b.db"
    run_arena(spec, store=store, progress=False)
    from longrecall.arena import Store

    with Store.open(store, create=False) as db:
        rows = {r["budget_key"]: r for r in db.policy_evals()}
    assert rows['"1KiB"']["status"] == "done" and rows['"1KiB"']["budget_tokens"] >= 1
    assert rows['"1KiB"']["metrics"]["budget_bytes"] == 1024
