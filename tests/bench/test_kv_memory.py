"""``longrecall bench --kv-memory``: policy strings, and one real cell per policy kind (no timings asserted)."""

import pytest

from longrecall.bench.kv_memory import KVMemorySpec, parse_policy, run_kv_memory, to_markdown

pytest.importorskip("transformers", reason="the kv-memory bench runs a Hugging Face Llama (the `hf` extra)")


def test_parse_policy():
    assert parse_policy("h2o/prefill:0.125") == ("h2o", "prefill", 0.125)
    assert parse_policy("window:2KiB") == ("window", None, "2KiB")
    assert parse_policy("streaming:64") == ("streaming", None, 64)
    assert parse_policy("full") == ("full", None, None)


def test_evicting_policies_hold_fewer_bytes_than_the_full_cache():
    spec = KVMemorySpec(policies=["dynamic", "full", "window:0.125", "snapkv/prefill:0.25"], lengths=[128],
                        decode_tokens=2, chunk=64, hidden_size=64, layers=2, heads=2, kv_heads=2, vocab_size=64,
                        threads=1, timeout=300)
    report = run_kv_memory(spec)
    rows = {r["policy"]: r for r in report["rows"]}
    assert all("error" not in r for r in rows.values()), rows
    full = rows["dynamic"]["cache_bytes_prefill"]
    assert full == 2 * 2 * 128 * 32 * 2 * 4  # layers x (K, V) x T x head_dim x KV heads x float32
    assert rows["window:0.125"]["cache_bytes_prefill"] < full / 4  # evicted tokens are freed, not masked
    assert rows["snapkv/prefill:0.25"]["cache_bytes_end"] > rows["snapkv/prefill:0.25"]["cache_bytes_prefill"]
    assert "| window:0.125 | 128 |" in to_markdown(report)
