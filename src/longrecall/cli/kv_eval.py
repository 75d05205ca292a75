"""``longrecall kv-eval``: KV-cache policies on a local Hugging Face model, on RULER-style text tasks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..checkpoint import atomic_write_bytes, atomic_write_json
from .bench import _ints


def _list(text: str) -> list[str]:
    return [v for v in text.split(",") if v]


def _progress(row: dict) -> None:
    accuracy = "—" if row["accuracy"] is None else f"{100 * row['accuracy']:.1f}%"
    print(f"{row['task']} T={row['length']} {row['policy']} [{row['protocol']}]: {accuracy}", flush=True)


def store_and_report(rows: list[dict], args) -> str:
    """With ``--store``: add ``rows`` to the results store's ``evaluations`` table; with ``--report`` too:
    write the store's report (its runs, policy evaluations and evaluations). Returns what was written."""
    if not args.store:
        return ""
    from ..arena.store import Store

    with Store.open(args.store) as store:
        store.add_evaluations(rows)
        if not args.report:
            return f"\nadded {len(rows)} evaluations to {args.store}"
        from ..report import write_report

        write_report(store.runs(), args.report, title=f"longrecall report: {args.store}",
                     policy_evals=store.policy_evals(), evaluations=store.evaluations())
    return f"\nadded {len(rows)} evaluations to {args.store}; report in {args.report}"


def check_store_args(args) -> str | None:
    """The error for ``--report`` without ``--store``, or for a store file that is not a results store."""
    if args.report and not args.store:
        return "--report writes the report of a results store: give --store too"
    if args.store:
        from ..arena.store import StoreError
        from ..arena.store_schema import check_store_file

        try:
            check_store_file(Path(args.store), create=True)
        except StoreError as error:
            return f"--store: {error}"
    return None


def add_store_arguments(p) -> None:
    p.add_argument("--store", default=None,
                   help="also add the results to this results store (SQLite; created if missing), beside arena runs")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="with --store: write the store's report (report.md, report.html, the frontier) to DIR")


def run(args) -> int:
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("error: kv-eval loads a Hugging Face model: pip install -e '.[hf]'")
        return 2
    import longrecall.policies  # noqa: F401  (registers the policies)

    from ..bench.kv_memory import parse_policy
    from ..kv_eval import KVEvalSpec, evaluation_rows, kv_eval, to_markdown
    from ..registry import POLICIES
    from ..validation import ArgumentError

    spec = KVEvalSpec(model=args.model, tokenizer=args.tokenizer, tasks=args.tasks, lengths=args.lengths,
                      policies=args.policies, protocols=args.protocols, examples=args.examples,
                      max_new_tokens=args.max_new_tokens, decode_tokens=args.decode_tokens, seed=args.seed,
                      threads=args.threads)
    problem = check_store_args(args)
    if problem:
        print(f"error: {problem}")
        return 2
    try:
        spec.validate()
        for text in spec.policies:
            name, mode, budget = parse_policy(text)
            POLICIES.get(name)(budget=budget, **({"mode": mode} if mode else {}))
    except (ArgumentError, KeyError, ValueError) as error:
        print(f"error: {error.args[0] if isinstance(error, KeyError) else error}")
        return 2
    report = kv_eval(spec, on_row=None if args.json else _progress)
    out = Path(args.out)
    atomic_write_json(out / "kv_eval.json", report)
    text = "# KV-cache policies on a Hugging Face model\n\n" + to_markdown(report)
    atomic_write_bytes(out / "kv_eval.md", text.encode())
    written = f"\nwrote {out / 'kv_eval.json'} and {out / 'kv_eval.md'}"
    written += store_and_report(evaluation_rows(report), args)
    print(json.dumps(report, indent=2) if args.json else text + written)
    return 0


def add_parser(sub) -> None:
    from ..policy_protocols import PROTOCOLS
    from ..text_tasks import TEXT_TASKS

    p = sub.add_parser(
        "kv-eval",
        help="KV-cache policies on a local Hugging Face model, on text retrieval tasks",
        description="Render RULER-style text tasks (passkey, single/multi-key needle, multi-value, variable "
        "tracking) at the given lengths in the model's tokens, score the full cache, then every policy and "
        "protocol on the same prompts. Nothing is downloaded: --model is a directory (save_pretrained). "
        "Prompts longer than the model's positions are skipped and counted, never truncated.",
        epilog="example:\n  longrecall kv-eval --model ./my-llama --lengths 1024,4096 "
        "--policies window:0.25,snapkv/prefill:0.25,h2o:2MiB --protocols agnostic,aware --examples 20\n"
        "  longrecall kv-eval --model ./my-llama --store runs/all.db --report report/all   (one store, one report)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="directory of a saved Hugging Face causal LM")
    p.add_argument("--tokenizer", default=None, help="its tokenizer's directory (default: --model)")
    p.add_argument("--tasks", type=_list, default=list(TEXT_TASKS), help=f"comma-separated: {','.join(TEXT_TASKS)}")
    p.add_argument("--lengths", type=_ints, default=[1024], help="prompt lengths in the model's tokens (1024)")
    p.add_argument("--policies", type=_list,
                   default=["window:0.25", "streaming:0.25", "h2o:0.25", "snapkv/prefill:0.25"],
                   help="comma-separated name[/mode][:budget]; budget = tokens, a fraction of the length or bytes")
    p.add_argument("--protocols", type=_list, default=["agnostic"], help=f"comma-separated: {','.join(PROTOCOLS)}")
    p.add_argument("--examples", type=int, default=20, help="examples per (task, length) (20)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="greedy answer length (32)")
    p.add_argument("--decode-tokens", type=int, default=32, help="free tokens generated by protocol decode (32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="kv_eval_results", help="directory for kv_eval.json and kv_eval.md")
    add_store_arguments(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run)
