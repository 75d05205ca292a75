"""Memory a KV-cache policy really frees: cache bytes, peak resident memory and decode speed on a
Hugging Face model (``longrecall bench --kv-memory``).

Compression is often simulated by masking, so no memory is saved (ThinK #5, kvpress #178).  Here
each (policy, budget, length) cell runs in a fresh subprocess on a randomly initialised Llama (the
weights do not change what is stored; nothing is downloaded) through the Hugging Face adapter:

1. prefill ``T`` random tokens in chunks of ``chunk`` tokens (chunked prefill: a prefill-mode policy
   compresses after each chunk, so the whole prompt's cache never exists at once);
2. decode ``decode_tokens`` tokens greedily, one at a time.

Per phase it records the cache's bytes (``LongrecallCache.state_bytes``: the tensors it holds), the
peak resident set size above the process's size after building the model (Linux ``VmHWM``, reset
between phases through ``/proc/self/clear_refs``), and the decode tokens/s.  A policy that kept
evicted tokens alive (a mask over a full cache, or a view into it) would show cache and peak bytes
growing with T like the full cache's; ``dynamic`` is the model's own ``DynamicCache`` (no policy) for
reference.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import time
from dataclasses import asdict, dataclass, field

__all__ = ["KVMemorySpec", "cache_bytes", "parse_policy", "run_kv_memory", "to_markdown"]


@dataclass
class KVMemorySpec:
    policies: list[str] = field(default_factory=lambda: ["dynamic", "full", "window:0.125", "streaming:0.125",
                                                         "h2o:0.125", "snapkv/prefill:0.125", "quest:0.125"])
    lengths: list[int] = field(default_factory=lambda: [1024, 4096, 16384, 32768])
    decode_tokens: int = 32
    chunk: int = 1024
    hidden_size: int = 256
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    vocab_size: int = 1024
    threads: int = 2
    timeout: float = 3600.0


def parse_policy(text: str) -> tuple[str, str | None, object]:
    """``"h2o/prefill:0.125"`` -> ("h2o", "prefill", 0.125); ``"window:2KiB"`` -> ("window", None, "2KiB");
    ``"full"`` -> ("full", None, None).  A budget is an int (tokens), a float (fraction) or bytes with a unit."""
    name, _, budget = text.partition(":")
    name, _, mode = name.partition("/")
    value: object = None
    if budget:
        for cast in (int, float):
            try:
                value = cast(budget)
                break
            except ValueError:
                continue
        else:
            value = budget
    return name, mode or None, value


def _hwm_kib() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1))


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak RSS to the current RSS (Linux >= 4.0)
        f.write("5")


def _cell(policy_text: str, T: int, spec: dict, queue) -> None:
    """Runs in a subprocess; puts one result dict on ``queue``."""
    import torch
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    import longrecall.policies  # noqa: F401  (registers the policies)
    from longrecall.adapters.hf import kv_policy
    from longrecall.registry import POLICIES

    out = {"policy": policy_text, "T": T}
    try:
        torch.set_num_threads(spec["threads"])
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=spec["vocab_size"], hidden_size=spec["hidden_size"],
                             intermediate_size=2 * spec["hidden_size"], num_hidden_layers=spec["layers"],
                             num_attention_heads=spec["heads"], num_key_value_heads=spec["kv_heads"],
                             max_position_embeddings=T + spec["decode_tokens"] + 1)
        config._attn_implementation = "sdpa"
        model = LlamaForCausalLM(config).float().eval()
        ids = torch.randint(spec["vocab_size"], (1, T), generator=torch.Generator().manual_seed(1))
        name, mode, budget = parse_policy(policy_text)
        if name == "dynamic":  # the model's own cache, no policy: the reference
            context, make_cache = _null(), DynamicCache
        else:
            policy = POLICIES.get(name)(budget=budget, **({"mode": mode} if mode else {}))
            context, make_cache = kv_policy(model, policy, context_len=T), None
        with torch.no_grad(), context as factory:
            make_cache = factory or make_cache
            base = _rss_kib()
            cache = make_cache()
            _reset_peak()
            tick = time.perf_counter()
            logits = None
            for start in range(0, T, spec["chunk"]):
                logits = model(ids[:, start:start + spec["chunk"]], cache=cache, use_cache=True).logits
            out["prefill_s"] = time.perf_counter() - tick
            out["prefill_peak_mib"] = (_hwm_kib() - base) / 1024
            out["cache_bytes_prefill"] = cache_bytes(cache)
            _reset_peak()
            token = logits[:, -1:].argmax(-1)
            tick = time.perf_counter()
            for _ in range(spec["decode_tokens"]):
                token = model(token, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
            seconds = time.perf_counter() - tick
            out["decode_tok_s"] = spec["decode_tokens"] / seconds if seconds > 0 else None
            out["decode_peak_mib"] = (_hwm_kib() - base) / 1024
            out["cache_bytes_end"] = cache_bytes(cache)
    except Exception as error:  # reported in the table, not raised: other cells still run
        out["error"] = f"{type(error).__name__}: {error}"
    queue.put(out)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def cache_bytes(cache) -> int:
    """Bytes of the tensors a cache holds: a LongrecallCache's own count, a DynamicCache's keys and values."""
    if hasattr(cache, "state_bytes"):
        return int(cache.state_bytes())
    from ..protocol import state_nbytes

    return int(sum(state_nbytes((layer.keys, layer.values)) for layer in cache.layers))


def _run(policy_text: str, T: int, spec: dict) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_cell, args=(policy_text, T, spec, queue))
    process.start()
    deadline, result = time.monotonic() + spec["timeout"], None
    while result is None:
        try:
            result = queue.get(timeout=1.0)
        except Exception:  # queue.Empty: the child may have died (out of memory)
            if not process.is_alive() and queue.empty():
                result = {"policy": policy_text, "T": T, "error": f"worker exited with code {process.exitcode}"}
            elif time.monotonic() > deadline:
                result = {"policy": policy_text, "T": T, "error": f"no result within {spec['timeout']}s"}
    process.join(10)
    if process.is_alive():
        process.kill()
    result["load_average"] = os.getloadavg()[0]
    return result


def run_kv_memory(spec: KVMemorySpec, on_result=None) -> dict:
    """Every (policy, length) cell in its own process; the report's ``rows`` in spec order."""
    from .speed import machine_info

    raw = asdict(spec)
    rows = []
    for T in spec.lengths:
        for policy in spec.policies:
            row = _run(policy, T, raw)
            rows.append(row)
            if on_result is not None:
                on_result(row)
    return {"machine": machine_info(spec.threads), "spec": raw, "rows": rows}


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def to_markdown(report: dict) -> str:
    spec = report["spec"]
    lines = [f"Random Llama: {spec['layers']} layers, width {spec['hidden_size']}, {spec['heads']} heads "
             f"({spec['kv_heads']} KV heads), float32; prefill in chunks of {spec['chunk']}, then "
             f"{spec['decode_tokens']} decoded tokens; {report['machine']['threads']} thread(s), "
             f"{report['machine']['cpu']}.", "",
             "| policy | T | cache after prefill (MiB) | cache at end (MiB) | peak RSS prefill (MiB) | "
             "peak RSS decode (MiB) | prefill s | decode tok/s | load |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['policy']} | {r['T']} | {r['error']} | | | | | | |")
            continue
        lines.append(f"| {r['policy']} | {r['T']} | {_fmt(r['cache_bytes_prefill'] / 2**20, 2)} | "
                     f"{_fmt(r['cache_bytes_end'] / 2**20, 2)} | {_fmt(r['prefill_peak_mib'])} | "
                     f"{_fmt(r['decode_peak_mib'])} | {_fmt(r['prefill_s'])} | {_fmt(r['decode_tok_s'])} | "
                     f"{_fmt(r['load_average'], 2)} |")
    return "\n".join(lines) + "\n"
