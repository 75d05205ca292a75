"""``longrecall bench``: tokens/s of parallel forms vs step loops, decode latency, peak memory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..bench.speed import MODES, BenchSpec, run_bench, to_markdown
from ..checkpoint import atomic_write_bytes, atomic_write_json
from ..registry import MIXERS


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def run_fla(args) -> int:
    """``--compare-fla``: our linear-attention kernels vs fla's pure-PyTorch references (same inputs)."""
    from ..bench.fla_compare import compare, fla_available, fla_cases, to_markdown
    from ..bench.speed import machine_info

    if not fla_available():
        print("error: --compare-fla needs flash-linear-attention's reference functions: "
              "pip install flash-linear-attention triton  (or: pip install -e '.[compare]')")
        return 2
    rows = compare(fla_cases(), args.lengths, batch=args.batch_sizes[0], repeats=args.repeats, threads=args.threads)
    out = Path(args.out)
    report = {"machine": machine_info(args.threads), "rows": rows}
    atomic_write_json(out / "fla_compare.json", report)
    text = ("# Linear-attention kernels vs flash-linear-attention's PyTorch references\n\n"
            f"Forward, float32, no grad, batch {args.batch_sizes[0]}, 2 heads, K = V = 64, {args.threads} thread(s); "
            "ours = the chunked kernels in `longrecall.ops.linear_attn`.\n\n" + to_markdown(rows))
    atomic_write_bytes(out / "fla_compare.md", text.encode())
    print(text)
    print(f"wrote {out / 'fla_compare.json'} and {out / 'fla_compare.md'}")
    return 0


def run_kv_memory(args) -> int:
    """``--kv-memory``: cache bytes, peak resident memory and decode tokens/s per KV-cache policy and length."""
    import longrecall.policies  # noqa: F401  (registers the policies)

    from ..bench.kv_memory import KVMemorySpec, parse_policy
    from ..bench.kv_memory import run_kv_memory as bench_memory
    from ..bench.kv_memory import to_markdown as md
    from ..registry import POLICIES

    try:
        import transformers  # noqa: F401
    except ImportError:
        print("error: --kv-memory runs a Hugging Face Llama: pip install -e '.[hf]'")
        return 2
    spec = KVMemorySpec(threads=args.threads, decode_tokens=args.decode_tokens)
    if args.kv_policies:
        spec.policies = args.kv_policies.split(",")
    for text in spec.policies:
        name, _, _ = parse_policy(text)
        if name != "dynamic" and name not in POLICIES.names():
            print(f"error: --kv-policies: unknown policy {name!r}; available: dynamic, {', '.join(POLICIES.names())}")
            return 2
    if args.lengths:
        spec.lengths = args.lengths
    report = bench_memory(spec, on_result=None if args.json else lambda r: print(r, flush=True))
    out = Path(args.out)
    atomic_write_json(out / "kv_memory.json", report)
    text = "# Memory a KV-cache policy frees\n\n" + md(report)
    atomic_write_bytes(out / "kv_memory.md", text.encode())
    print(json.dumps(report, indent=2) if args.json else text)
    return 1 if any("error" in r for r in report["rows"]) else 0


def run_train_steps(args, names: list[str], mixer_kwargs: dict) -> int:
    """``--train-steps``: ms per optimisation step of whole 2-layer models, every mixer in one process."""
    from ..bench.train_step import TrainStepSpec
    from ..bench.train_step import run_train_steps as bench_steps
    from ..bench.train_step import to_markdown as steps_markdown

    reference = "attention"
    if reference not in names:
        names = [reference, *names]  # the ratios need it
    spec = TrainStepSpec(mixers=names, widths=args.widths, lengths=args.lengths or [64],
                         batch_size=(args.batch_sizes or [32])[0], threads=args.threads if args.threads_given else 1,
                         rounds=args.repeats, mixer_kwargs=mixer_kwargs, compile=args.compile)
    report = bench_steps(spec, on_round=None if args.json else lambda r, n: print(f"round {r}/{n} done", flush=True))
    out = Path(args.out)
    atomic_write_json(out / "train_steps.json", report)
    text = steps_markdown(report)
    atomic_write_bytes(out / "train_steps.md", text.encode())
    print(json.dumps(report, indent=2) if args.json else text)
    if not args.json:
        print(f"wrote {out / 'train_steps.json'} and {out / 'train_steps.md'}")
    return 0


def run(args) -> int:
    args.threads_given = args.threads is not None
    if args.threads is None:
        args.threads = 2
    if args.kv_memory:
        return run_kv_memory(args)
    if args.compare_fla:
        args.lengths = args.lengths or [256, 1024, 4096, 16384]
        args.batch_sizes = args.batch_sizes or [1, 16]
        return run_fla(args)
    names = MIXERS.names() if args.mixers == "all" else args.mixers.split(",")
    for name in names:
        try:
            MIXERS.get(name)
        except KeyError as error:
            print(f"error: --mixers: {error.args[0]}")
            return 2
    if args.train_steps:
        try:
            mixer_kwargs = json.loads(args.mixer_kwargs)
        except json.JSONDecodeError as error:
            print(f"error: --mixer-kwargs must be JSON like '{{\"mamba\": {{\"scan\": \"naive\"}}}}': {error}")
            return 2
        return run_train_steps(args, names, mixer_kwargs)
    if args.lengths is None:
        args.lengths = [256, 1024, 4096, 16384]
    if args.batch_sizes is None:
        args.batch_sizes = [1, 16]
    modes = args.modes.split(",")
    for mode in modes:
        if mode not in MODES:
            print(f"error: --modes must be a comma-separated subset of {', '.join(MODES)}; got {mode!r}")
            return 2
    if args.quick:
        args.lengths, args.batch_sizes, args.repeats = [64, 256], [1], 1
    try:
        mixer_kwargs = json.loads(args.mixer_kwargs)
    except json.JSONDecodeError as error:
        print(f"error: --mixer-kwargs must be JSON like '{{\"mamba\": {{\"scan\": \"naive\"}}}}': {error}")
        return 2
    if not isinstance(mixer_kwargs, dict) or not all(k in names and isinstance(v, dict)
                                                     for k, v in mixer_kwargs.items()):
        print("error: --mixer-kwargs must map benchmarked mixer names to dicts of constructor arguments")
        return 2
    spec = BenchSpec(mixers=names, lengths=args.lengths, batch_sizes=args.batch_sizes, d_model=args.d_model,
                     modes=modes, repeats=args.repeats, threads=args.threads, compare_mambapy=not args.no_mambapy,
                     mixer_kwargs=mixer_kwargs)

    out = Path(args.out)

    def save(report: dict) -> None:
        atomic_write_json(out / "bench.json", report)
        atomic_write_bytes(out / "bench.md", to_markdown(report).encode())

    def on_result(result: dict, report: dict) -> None:
        save(report)  # after every cell: an interrupted bench keeps what it measured
        if not args.json:
            print(json.dumps({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in result.items()}))

    report = run_bench(spec, on_result=on_result)
    save(report)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(to_markdown(report))
        print(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")
    return 1 if report["skipped"] else 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="measure speed and memory of mixers",
        description="Forward tokens/s (parallel form) vs the step loop, per-token step latency after a "
        "T-token prefill, training-step tokens/s and peak resident memory, per mixer, length and batch. "
        "Every cell runs in its own process. Mixers failing their contract check are not timed.",
        epilog="examples:\n  longrecall bench --quick\n"
        "  longrecall bench --mixers s4d,mamba --lengths 1024,4096 --batch-sizes 1\n"
        "  longrecall bench --mixers mamba --modes train --mixer-kwargs '{\"mamba\": {\"scan\": \"naive\"}}'\n"
        "  longrecall bench --mixers all --out bench_results   (the full table: about 10 minutes)\n"
        "  longrecall bench --train-steps --widths 64 --lengths 64   (training steps of every mixer's 2-layer model)\n"
        "  longrecall bench --compare-fla --lengths 1024,4096 --batch-sizes 1\n"
        "  longrecall bench --kv-memory --lengths 4096,32768 --kv-policies dynamic,full,window:0.125",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--mixers", default="all", help="comma-separated registry keys, or 'all' (default)")
    p.add_argument("--lengths", type=_ints, default=None,
                   help="comma-separated T values (default 256,1024,4096,16384; 64 with --train-steps)")
    p.add_argument("--batch-sizes", type=_ints, default=None,
                   help="comma-separated batch sizes (default 1,16; 32 with --train-steps, which takes the first)")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 2; 1 with --train-steps)")
    p.add_argument("--train-steps", action="store_true",
                   help="instead of the mixer table: ms per training step (forward + backward + AdamW) of whole "
                        "2-layer models at the presets' sizes, every mixer timed in one process in interleaved rounds, "
                        "with its ratio to attention (--repeats = rounds)")
    p.add_argument("--widths", type=_ints, default=[64], help="model widths for --train-steps (default 64)")
    p.add_argument("--compile", action="store_true",
                   help="with --train-steps: also time every model under torch.compile (the `compile` training option)")
    p.add_argument("--mixer-kwargs", default="{}",
                   help='JSON: constructor arguments per mixer, e.g. \'{"mamba": {"scan": "naive"}}\'')
    p.add_argument("--no-mambapy", action="store_true", help="skip the comparison with mambapy even if installed")
    p.add_argument("--compare-fla", action="store_true",
                   help="instead of the mixer table: time our linear-attention kernels against "
                        "flash-linear-attention's PyTorch references on the same inputs and check they agree "
                        "(needs the `compare` extra)")
    p.add_argument("--kv-memory", action="store_true",
                   help="instead of the mixer table: cache bytes, peak resident memory (prefill and decode) and "
                        "decode tokens/s of KV-cache policies on a random Hugging Face Llama, each cell in its own "
                        "process (needs the `hf` extra); --lengths default 1024,4096,16384,32768")
    p.add_argument("--kv-policies", default=None,
                   help="with --kv-memory: comma-separated name[/mode][:budget], budget = tokens, a fraction or bytes "
                        "('window:0.125,snapkv/prefill:1MiB,dynamic'; dynamic = the model's own cache)")
    p.add_argument("--decode-tokens", type=int, default=32, help="with --kv-memory: tokens decoded after the prefill")
    p.add_argument("--quick", action="store_true", help="T in {64, 256}, batch 1, one repeat: a smoke run")
    p.add_argument("--out", default="bench_results", help="directory for bench.json and bench.md")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run)
