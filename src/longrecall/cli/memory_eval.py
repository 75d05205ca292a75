"""``longrecall memory-eval``: evidence recall of a text memory against its bytes, on LoCoMo, LongMemEval
or the offline LoCoMo-style generator."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..checkpoint import atomic_write_bytes, atomic_write_json
from .bench import _ints
from .kv_eval import _list
from .store_args import add_store_arguments, check_store_args, store_and_report


def _budgets(text: str) -> list[float | None]:
    out = []
    for v in _list(text):
        if v.lower() in ("none", "all", "1"):
            out.append(None)
            continue
        try:
            out.append(float(v))
        except ValueError:
            raise argparse.ArgumentTypeError(f"budgets are 'none' or fractions in (0, 1], got {v!r}") from None
    return out


def to_markdown(rows: list[dict], ks: list[int], source: str) -> str:
    cats = sorted({c for r in rows for c in r["scores"]["by_category"]})
    k = max(ks)
    built = any(r.get("builder") for r in rows)  # a builder column only when facts or summaries are measured
    labels = ["retriever", "unit", *(["builder"] if built else []), "kept"]
    head = [*labels, *[f"R@{x}" for x in ks], *[f"{c} R@{k}" for c in cats], "text KiB", "index KiB", "total KiB"]
    caption = f"Evidence recall on {source} (means over conversations for the bytes)."
    if built:
        caption += (" Fact and summary rows are scored through their sources (turns; on LongMemEval, the sessions "
                    "of summaries and LLM facts): R@k counts the evidence covered by the sources of the top k items, "
                    "however many turns that is, as LoCoMo scored observations and summaries.")
    rule = "|" + "---|" * len(labels) + "---:|" * (len(head) - len(labels))
    lines = [caption, "", "| " + " | ".join(head) + " |", rule]
    for r in rows:
        metric = "recall" if f"recall@{k}" in r["scores"]["overall"] else "recall_any"
        overall = [f"{r['scores']['overall'].get(f'{metric}@{x}', float('nan')):.3f}" for x in ks]
        per = [f"{r['scores']['by_category'].get(c, {}).get(f'{metric}@{k}', float('nan')):.3f}" for c in cats]
        kept = "all" if r["budget"] is None else f"{r['budget']:g} of the text"
        builder = [r.get("builder") or "-"] if built else []
        lines.append("| " + " | ".join([r["retriever"], r["unit"], *builder, kept, *overall, *per,
                                         f"{r['text_bytes'] / 1024:,.1f}", f"{r['index_bytes'] / 1024:,.1f}",
                                         f"{r['total_bytes'] / 1024:,.1f}"]) + " |")
    return "\n".join(lines) + "\n"


def run(args) -> int:
    try:
        import rank_bm25  # noqa: F401
        import Stemmer  # noqa: F401
    except ImportError:
        print("error: memory-eval needs the `memory` extra: pip install -e '.[memory]'")
        return 2
    from ..agent_memory.evaluate import RETRIEVERS, UNITS, evaluate_memory, evaluation_rows
    from ..agent_memory.generator import generate, write_locomo
    from ..agent_memory.llm import LLMClient, LLMError
    from ..agent_memory.loaders import load_locomo, load_longmemeval
    from ..validation import ArgumentError

    out = Path(args.out)
    problem = check_store_args(args)
    if problem:
        print(f"error: {problem}")
        return 2
    try:
        for unit in args.units:
            if unit not in UNITS:
                raise ArgumentError("--units", f"a comma-separated subset of {', '.join(UNITS)}", unit)
        client = None
        if args.builder == "llm":  # checked before any work, so a missing flag fails at once
            for flag, value in (("--llm-url", args.llm_url), ("--llm-model", args.llm_model)):
                if not value:
                    raise ArgumentError(flag, "given with --builder llm (an OpenAI-compatible server's URL and "
                                        "model, e.g. --llm-url http://localhost:8000/v1 --llm-model NAME)", "nothing")
            key = None
            if args.llm_key_env:
                key = os.environ.get(args.llm_key_env)
                if key is None:
                    raise ArgumentError("--llm-key-env", "the name of a set environment variable holding the key",
                                        f"{args.llm_key_env!r}, which is not set")
            client = LLMClient(args.llm_url, args.llm_model, api_key=key)
        if args.data:
            fmt = args.format
            benchmark = load_locomo(args.data) if fmt == "locomo" else load_longmemeval(args.data)
            source = f"{args.data} ({fmt})"
        else:
            fmt = "locomo"
            path = out / "locomo_synthetic.json"
            counts = {} if args.questions is None else {"questions_per_category": args.questions}
            write_locomo(path, generate(args.synthetic, args.sessions, args.turns, seed=args.seed, **counts))
            benchmark = load_locomo(path)
            source = (f"the LoCoMo-style generator ({args.synthetic} conversations x {args.sessions} sessions x "
                      f"{args.turns} turns, seed {args.seed}; written to {path})")
        for name in args.retrievers:
            if name not in RETRIEVERS:
                raise ArgumentError("--retrievers", f"a comma-separated subset of {', '.join(RETRIEVERS)}", name)
        rows, row_cache = [], {}  # facts and summaries are built once per unit, whatever the retriever
        for retriever in args.retrievers:
            for unit in args.units:
                for budget in args.budgets:
                    row = evaluate_memory(benchmark, fmt=fmt, retriever=retriever, unit=unit, ks=tuple(args.k),
                                          budget=budget, builder=args.builder, client=client, row_cache=row_cache)
                    row["scores"].pop("per_question", None)
                    rows.append(row)
                    if not args.json:
                        made = f" ({row['builder']})" if row["builder"] else ""
                        print(f"{retriever} {unit}{made} budget={budget}: {row['scores']['overall']} "
                              f"({row['total_bytes'] / 1024:,.1f} KiB)", flush=True)
    except (ArgumentError, ValueError, OSError, LLMError) as error:
        print(f"error: {error}")
        return 2
    report = {"source": source, "format": fmt, "load_stats": benchmark.stats.to_dict(), "rows": rows}
    atomic_write_json(out / "memory_eval.json", report)
    text = "# Text memory: evidence recall against bytes\n\n" + to_markdown(rows, args.k, source)
    try:  # the figure needs the `plot` extra; the tables do not
        from ..report.plot_memory import plot_recall_vs_bytes

        plot_recall_vs_bytes(rows, out / "recall_vs_bytes.png", max(args.k), "budgets: oldest text forgotten first")
        text += "\n![recall against bytes](recall_vs_bytes.png)\n"
    except ImportError:
        pass
    atomic_write_bytes(out / "memory_eval.md", text.encode())
    turns = sum(1 for c in benchmark.conversations for _ in c.turns())
    if args.data:
        task, setting = f"{Path(args.data).name} ({fmt})", {"data": str(Path(args.data).resolve())}
    else:
        task = f"locomo-style generator, {args.synthetic} conversation{'s' if args.synthetic != 1 else ''}"
        setting = {"sessions": args.sessions, "turns": args.turns, "questions": args.questions, "seed": args.seed}
    setting.update(k=list(args.k), builder=args.builder, llm_model=args.llm_model if args.builder == "llm" else None)
    written = store_and_report(evaluation_rows(rows, task=task, ks=args.k, setting=setting,
                                               mean_turns=round(turns / max(1, len(benchmark.conversations))) or None),
                               args)
    print(json.dumps(report, indent=2) if args.json else text + f"\nwrote {out / 'memory_eval.json'} and "
          f"{out / 'memory_eval.md'}" + written)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "memory-eval",
        help="evidence recall of a text memory (retriever x unit x byte budget) on LoCoMo / LongMemEval files",
        description="Write each conversation to a memory store (turns, sessions, facts or summaries), optionally "
        "forget it down to a fraction of its text (oldest first), retrieve for every question and score the "
        "benchmark's evidence recall (LoCoMo recall@k per category; LongMemEval recall_any/all and NDCG) against "
        "the bytes kept. Reads a file you supply (--data) or generates a LoCoMo-style one offline (--synthetic).",
        epilog="examples:\n  longrecall memory-eval --synthetic 10 --retrievers bm25,bm25-dated,bm25-time\n"
        "  longrecall memory-eval --data locomo10.json --format locomo --k 5,10\n"
        "  longrecall memory-eval --data longmemeval_s.json --format longmemeval --units session,turn\n"
        "  longrecall memory-eval --synthetic 10 --store runs/all.db --report report/all   (one store, one report)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="a LoCoMo or LongMemEval JSON file")
    source.add_argument("--synthetic", type=int, help="generate this many LoCoMo-style conversations offline")
    p.add_argument("--format", choices=["locomo", "longmemeval"], default="locomo", help="the --data file's schema")
    p.add_argument("--sessions", type=int, default=19, help="with --synthetic: sessions per conversation (19)")
    p.add_argument("--turns", type=int, default=16, help="with --synthetic: turns per session (16)")
    p.add_argument("--questions", type=int, default=None,
                   help="with --synthetic: questions per category (default: LoCoMo's mix, for the default sizes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retrievers", type=_list, default=["bm25"],
                   help="comma-separated: bm25,bm25-dated,bm25-time,dense,dense-dated,hybrid")
    p.add_argument("--units", type=_list, default=["turn"],
                   help="comma-separated retrieval units: turn,session,fact,summary")
    p.add_argument("--builder", choices=["extractive", "llm"], default="extractive",
                   help="how facts and summaries are made: extractive (offline sentence rules and LexRank) or llm "
                   "(an OpenAI-compatible server, --llm-url and --llm-model)")
    p.add_argument("--llm-url", help="with --builder llm: the API root, e.g. http://localhost:8000/v1")
    p.add_argument("--llm-model", help="with --builder llm: the model name to send")
    p.add_argument("--llm-key-env", metavar="VAR",
                   help="with --builder llm: the environment variable holding the API key (default OPENAI_API_KEY)")
    p.add_argument("--budgets", type=_budgets, default=[None],
                   help="comma-separated: none (keep all) or fractions of the text kept, oldest forgotten first")
    p.add_argument("--k", type=_ints, default=[5, 10], help="comma-separated k (5,10)")
    p.add_argument("--out", default="memory_eval_results", help="directory for memory_eval.json and .md")
    add_store_arguments(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run)
