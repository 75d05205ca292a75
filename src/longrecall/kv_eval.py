"""``longrecall kv-eval``: KV-cache policies on a local Hugging Face model, on text retrieval tasks.

What users of KV-cache compression run: their own pretrained checkpoint, RULER-style text tasks
(``text_tasks``: passkey, single/multi-key needle, multi-value, variable tracking) across context
lengths, accuracy against budget, with the protocol said out loud (``policy_protocols``).  For each
(task, length) ``examples`` prompts are rendered in the model's own tokens, their needles spread
over depths (0, 1); every policy is then scored on the same prompts, after the full cache (the
model's own ``DynamicCache``) has been scored on them as the reference.

Per example and protocol (batch 1; the policy manages every attention layer through the adapter,
ratio budgets are fractions of the task's ``length``):

- ``agnostic``: prefill the context (one forward: a prefill-mode policy compresses it), read the
  question token by token, generate the answer greedily;
- ``aware``: prefill context + question (compressed with the question in view), then generate the
  answer directly, as SnapKV is used: in prefill mode the first answer token comes from the prefill
  pass itself, the rest from the compressed cache.  (The synthetic protocol of ``evaluate_policy``
  asks the question a second time instead, so that every scored prediction reads the compressed
  cache; a text model trained on one question per prompt is not asked to read a repeated one.)
- ``reuse``: prefill the context once, and answer every question of the example (four keys of
  ``niah_multikey``) each from a copy of that cache;
- ``decode``: prefill the context, generate ``decode_tokens`` free tokens, then read the question and
  generate.

Other protocols ask the example's first question, as RULER does.  An answer is correct when the
generated text contains every expected string.  A prompt longer than the model's
``max_position_embeddings`` (with the answer's tokens) is never truncated: it is skipped and counted.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .bench.kv_memory import cache_bytes, parse_policy
from .policy_protocols import PROTOCOLS
from .text_tasks import TEXT_TASKS, TextExample, render
from .validation import ArgumentError, check_choice, check_int

__all__ = ["KVEvalSpec", "kv_eval", "to_markdown", "evaluation_rows"]


@dataclass
class KVEvalSpec:
    model: str  # a directory holding a Hugging Face causal LM (save_pretrained)
    tokenizer: str | None = None  # its tokenizer's directory (default: the model's)
    tasks: list[str] = field(default_factory=lambda: list(TEXT_TASKS))
    lengths: list[int] = field(default_factory=lambda: [1024])
    policies: list[str] = field(default_factory=lambda: ["window:0.25", "streaming:0.25", "h2o:0.25",
                                                         "snapkv/prefill:0.25"])
    protocols: list[str] = field(default_factory=lambda: ["agnostic"])
    examples: int = 20
    max_new_tokens: int = 32
    decode_tokens: int = 32
    seed: int = 0
    threads: int | None = None

    def validate(self) -> None:
        for i, task in enumerate(self.tasks):
            check_choice(f"tasks[{i}]", task, TEXT_TASKS)
        for i, protocol in enumerate(self.protocols):
            check_choice(f"protocols[{i}]", protocol, PROTOCOLS)
        check_int(examples=self.examples, max_new_tokens=self.max_new_tokens)
        check_int(decode_tokens=self.decode_tokens, minimum=0)
        for length in self.lengths:
            check_int(lengths=length)
        if not Path(self.model).is_dir():
            raise ArgumentError("model", "a directory with a saved Hugging Face model (config.json, weights)",
                                repr(self.model))


def _load(spec: KVEvalSpec):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(spec.model, local_files_only=True, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer or spec.model, local_files_only=True)
    return model, tokenizer


def _ids(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor([tokenizer.encode(text, add_special_tokens=False)], dtype=torch.long)  # (1, n)


def _feed(model, cache, ids: torch.Tensor) -> torch.Tensor:
    """Read ``ids`` (1, n) one token at a time (decoding appends); the last logits (1, V)."""
    logits = None
    for t in range(ids.shape[1]):
        logits = model(ids[:, t:t + 1], cache=cache, use_cache=True).logits[:, -1]
    return logits


def _generate(model, cache, logits: torch.Tensor, n: int) -> list[int]:
    out = []
    for _ in range(n):
        token = logits.argmax(-1, keepdim=True)  # (1, 1)
        out.append(int(token))
        logits = model(token, cache=cache, use_cache=True).logits[:, -1]
    return out


def _answer(model, tokenizer, make_cache, example: TextExample, protocol: str, spec: KVEvalSpec
            ) -> tuple[list[tuple[str, list[str]]], int]:
    """Generated texts with their expected answers, and the cache bytes after the compressed prompt."""
    context = _ids(tokenizer, example.context)
    questions = example.questions if protocol == "reuse" else example.questions[:1]
    asked = [_ids(tokenizer, " " + q.text) for q in questions]
    cache = make_cache()
    if protocol == "aware":
        logits = model(torch.cat([context, asked[0]], 1), cache=cache, use_cache=True).logits[:, -1]
    else:
        logits = model(context, cache=cache, use_cache=True).logits[:, -1]
    held = cache_bytes(cache)
    if protocol == "decode":
        _generate(model, cache, logits, spec.decode_tokens)
    results = []
    for question, ids in zip(questions, asked, strict=True):
        own = copy.deepcopy(cache) if protocol == "reuse" else cache
        # aware: the question was read with the prompt; the answer follows it directly
        start = logits if protocol == "aware" else _feed(model, own, ids)
        generated = _generate(model, own, start, spec.max_new_tokens)
        results.append((tokenizer.decode(generated, skip_special_tokens=True), question.answers))
    return results, held


def _examples(spec: KVEvalSpec, tokenizer, task: str, length: int, limit: int) -> tuple[list[TextExample], str]:
    """Rendered examples that fit the model (prompt + answer within ``limit`` positions), and why none
    could be rendered ('' when some were)."""
    rng = random.Random(f"{spec.seed}:{task}:{length}")
    out = []
    for i in range(spec.examples):
        try:
            example = render(task, length, tokenizer, rng, depth=(i + 0.5) / spec.examples)
        except ArgumentError as error:
            return [], str(error)
        out.append(example)
    fits = [e for e in out if e.prompt_tokens + spec.max_new_tokens + spec.decode_tokens <= limit]
    return fits, ""


def kv_eval(spec: KVEvalSpec, on_row=None) -> dict:
    """Score the full cache and every (policy, protocol) on every (task, length); returns the report."""
    from transformers import DynamicCache

    import longrecall.policies  # noqa: F401  (registers the policies)

    from .adapters.hf import kv_policy
    from .registry import POLICIES

    spec.validate()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    model, tokenizer = _load(spec)
    limit = getattr(model.config, "max_position_embeddings", None) or 10**9
    rows = []
    with torch.no_grad():
        for task in spec.tasks:
            for length in spec.lengths:
                examples, why = _examples(spec, tokenizer, task, length, limit)
                skipped = spec.examples - len(examples)
                reference = None
                for text in ["full cache", *spec.policies]:
                    for protocol in spec.protocols:
                        tick = time.perf_counter()
                        row = {"task": task, "length": length, "policy": text, "protocol": protocol,
                               "examples": len(examples), "skipped": skipped, "skip_reason": why or None}
                        if text == "full cache":
                            scored = _score(model, tokenizer, DynamicCache, examples, protocol, spec)
                        else:
                            name, mode, budget = parse_policy(text)
                            policy = POLICIES.get(name)(budget=budget, **({"mode": mode} if mode else {}))
                            with kv_policy(model, policy, context_len=length) as factory:
                                scored = _score(model, tokenizer, factory, examples, protocol, spec)
                        row.update(scored, seconds=time.perf_counter() - tick)
                        if text == "full cache" and protocol == spec.protocols[0]:
                            reference = row["accuracy"]
                        row["reference_accuracy"] = reference
                        rows.append(row)
                        if on_row is not None:
                            on_row(row)
    return {"spec": asdict(spec), "model_max_positions": limit, "rows": rows}


def _score(model, tokenizer, make_cache, examples: list[TextExample], protocol: str, spec: KVEvalSpec) -> dict:
    correct = asked = 0
    held = []
    for example in examples:
        results, bytes_held = _answer(model, tokenizer, make_cache, example, protocol, spec)
        held.append(bytes_held)
        for text, answers in results:
            asked += 1
            correct += all(a in text for a in answers)
    return {"accuracy": correct / asked if asked else None, "questions": asked,
            "cache_bytes": round(sum(held) / len(held)) if held else None}


def to_markdown(report: dict) -> str:
    spec = report["spec"]
    lines = [f"Model `{spec['model']}` ({report['model_max_positions']} positions); {spec['examples']} examples per "
             f"(task, length), needles spread over depths; greedy answers of up to {spec['max_new_tokens']} tokens, "
             "correct when every expected string is generated.", "",
             "| task | length | policy | protocol | accuracy | full cache | questions | skipped | cache after prompt |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        acc = "—" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
        ref = "—" if r["reference_accuracy"] is None else f"{100 * r['reference_accuracy']:.1f}%"
        held = "—" if r["cache_bytes"] is None else f"{r['cache_bytes'] / 2**10:,.1f} KiB"
        lines.append(f"| {r['task']} | {r['length']} | {r['policy']} | {r['protocol']} | {acc} | {ref} | "
                     f"{r['questions']} | {r['skipped']} | {held} |")
    return "\n".join(lines) + "\n"


def evaluation_rows(report: dict) -> list[dict]:
    """The report's rows as rows of the results store's ``evaluations`` table
    (``Store.add_evaluations``; ``longrecall kv-eval --store``): system = model directory name + policy
    (name/mode), the budget apart, the score the accuracy, the reference the full cache's under the same
    protocol (None on the full cache's own rows), the bytes the cache held after the prompt."""
    spec = report["spec"]
    model = Path(spec["model"]).resolve().name
    setting = {"model": str(Path(spec["model"]).resolve()), "tokenizer": spec.get("tokenizer"),
               "examples": spec["examples"], "max_new_tokens": spec["max_new_tokens"],
               "decode_tokens": spec["decode_tokens"], "seed": spec["seed"]}
    full = {(r["task"], r["length"], r["protocol"]): r["accuracy"]
            for r in report["rows"] if r["policy"] == "full cache"}
    out = []
    for r in report["rows"]:
        if r["policy"] == "full cache":
            system, budget, reference = f"{model} (full cache)", None, None
        else:
            name, mode, budget = parse_policy(r["policy"])
            system = f"{model} + {name}" + (f"/{mode}" if mode else "")
            reference = full.get((r["task"], r["length"], r["protocol"]))
        out.append({"source": "kv-eval", "family": "KV-cache policy", "task": r["task"], "length": r["length"],
                    "system": system, "budget": budget, "protocol": r["protocol"], "setting": setting,
                    "metric": "accuracy", "score": r["accuracy"], "reference_score": reference,
                    "state_bytes": r["cache_bytes"], "seconds": r.get("seconds"),
                    "metrics": {k: r.get(k) for k in ("questions", "examples", "skipped", "skip_reason")}})
    return out
