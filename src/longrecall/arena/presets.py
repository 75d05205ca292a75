"""Named arena specs. ``longrecall arena --list-presets`` prints them with their descriptions.

Each preset is a spec dict (the same keys as a TOML spec file) plus a one-line description and the
runtime measured on the project's 2-core CPU.
"""

from __future__ import annotations

from ..models.architectures import architecture

FOUNDATION_MIXERS = ["attention", "sliding_window", "s4d", "mamba"]

PRESETS: dict[str, dict] = {
    "quick": {
        "description": "the main job: 4 foundation memories on MQAR at T=64 and 128 (8 runs, up to 1,200 steps at lr "
                       "1e-3, the recipe study's best rate for Mamba; about 9 min with 2 workers on 2 cores)",
        # One width and one learning rate to fit 10 minutes on 2 cores: lr 1e-3 is where Mamba learns
        # fastest in the recipe study (docs/results.md) and attention still converges; every run that
        # does not reach 0.99 is reported as a lower bound (its convergence status), not a capacity.
        "spec": {
            "name": "quick",
            "mixers": [
                "attention",
                {"name": "sliding_window", "kwargs": {"window": 32}},
                "s4d",
                "mamba",
            ],
            "tasks": [{"task": "mqar", "kwargs": {"vocab_size": 256, "num_kv_pairs": 4}}],
            "lengths": [64, 128],
            "widths": [64],
            "seeds": [0],
            "n_layers": 2,
            "train": {
                "steps": 1200, "batch_size": 32, "lr": 1e-3, "warmup_steps": 100, "short_conv": 4,
                "eval_every": 100, "eval_examples": 256, "early_stop_accuracy": 0.99, "target_accuracy": 0.99,
                "threads": 1,
            },
        },
    },
    "zoology-mqar": {
        "description": "CPU-scale Zoology MQAR sweep on the recipe: 4 memories x widths 32-128 x (T, kv pairs) = "
                       "(64, 4), (128, 8), (256, 16) x lr 1e-3, 3e-3 (72 runs, 1,500 steps extended to 3,000 while "
                       "learning; hours on 2 cores, see docs/results.md)",
        # Zoology (Arora et al. 2023, Figure 2) ties the number of kv pairs to the length:
        # (64, 4), (128, 8), (256, 16), (512, 64); widths 64-512; vocab 8192; the best of 4 learning
        # rates per point. CPU scale: the first three lengths, widths 32-128, vocab 512, a short conv as
        # in Zoology's BaseConv layer, the best of 2 rates (1e-3 is where Mamba learns, 3e-3 where
        # attention converges fastest in the recipe study), and each run's convergence status.
        "spec": {
            "name": "zoology-mqar",
            "mixers": FOUNDATION_MIXERS,
            "tasks": [
                {"task": "mqar", "kwargs": {"vocab_size": 512, "num_kv_pairs": 4}, "lengths": [64]},
                {"task": "mqar", "kwargs": {"vocab_size": 512, "num_kv_pairs": 8}, "lengths": [128]},
                {"task": "mqar", "kwargs": {"vocab_size": 512, "num_kv_pairs": 16}, "lengths": [256]},
            ],
            "widths": [32, 64, 128],
            "seeds": [0],
            "lrs": [1e-3, 3e-3],
            "n_layers": 2,
            "train": {
                "steps": 1500, "max_steps": 3000, "batch_size": 32, "warmup_steps": 100, "short_conv": 4,
                "eval_every": 250, "eval_examples": 512, "early_stop_accuracy": 0.99, "target_accuracy": 0.99,
                "threads": 1,
            },
        },
    },
}


# CPU-scale settings per probe: small enough that a 2-layer width-64 model can learn it in a few
# hundred steps when its memory allows (the learning tests in tests/tasks/ use the same scales)
PROBE_TASKS = [
    {"task": "mqar", "kwargs": {"vocab_size": 256, "num_kv_pairs": 8}},
    {"task": "passkey", "kwargs": {"key_digits": 3, "filler_len": 5}},
    {"task": "niah", "kwargs": {"vocab_size": 64, "variant": "multikey", "num_needles": 2}},
    {"task": "selective_copy", "kwargs": {"n_tokens": 8, "alphabet_size": 8}},
    {"task": "induction", "kwargs": {"vocab_size": 16}},
    {"task": "copy", "kwargs": {"alphabet_size": 8}},
    {"task": "delayed_copy", "kwargs": {"n_symbols": 5, "alphabet_size": 8}},
    {"task": "set_disjointness", "kwargs": {"universe_size": 256, "short_size": 2}},
    {"task": "order_recall", "kwargs": {"vocab_size": 64}},
    {"task": "fact_update", "kwargs": {"vocab_size": 64, "n_keys": 4, "n_updated_keys": 2, "n_updates": 2}},
    {"task": "multi_hop", "kwargs": {"vocab_size": 64, "n_hops": 2, "n_chains": 4}},
    {"task": "listops", "kwargs": {"max_depth": 3, "max_args": 5, "min_length": 16}},
]

PRESETS["probes"] = {
    "description": "the 4 foundation memories on every task at T=128, width 64 (48 runs)",
    "spec": {
        "name": "probes",
        "mixers": FOUNDATION_MIXERS,
        "tasks": PROBE_TASKS,
        "lengths": [128],
        "widths": [64],
        "seeds": [0],
        "n_layers": 2,
        "train": {
            "steps": 400, "batch_size": 32, "lr": 3e-3, "warmup_steps": 40, "short_conv": 4,
            "eval_every": 200, "eval_examples": 256, "threads": 1,
        },
    },
}


# every mixer whose memory does not grow with the sequence (constant, or bounded by a window),
# plus full attention as the reference point of the frontier
FRONTIER_MIXERS = [
    "attention", {"name": "sliding_window", "kwargs": {"window": 32}}, "s4d", "mamba", "mamba2",
    "linear_attention", "retnet", "gla", "deltanet", "gated_deltanet", "rwkv6", "mlstm",
    {"name": "based", "kwargs": {"window": 16}}, "titans", "mom",
]

# Each mixer's learning rate from the recipe study (docs/results.md, answers loss, width 64, MQAR with
# 4 pairs): the best rate where the study has measured all three, else the best of 1e-3 and 3e-3
# (the two rates at which some mixer won; no mixer measured so far was best at 3e-4). Where that one
# rate left a width on a plateau or diverged in the first run of this preset (S4D and Mamba at widths
# 32-64, RetNet and GLA at 128, Titans at 64 and 128), the study's second-best rate is added (RetNet's
# three ended within 0.01 of each other: the middle one), so no verdict rests on one rate; the report
# takes the best of the two (Zoology's protocol).
FRONTIER_LRS = {
    "attention": [3e-3], "sliding_window": [3e-3], "s4d": [1e-3, 3e-3], "mamba": [3e-4, 1e-3],
    "linear_attention": [3e-3], "retnet": [1e-3, 3e-3], "gla": [3e-4, 1e-3], "deltanet": [3e-3], "mlstm": [3e-3],
    "titans": [3e-4, 1e-3],
}


# Mixers with a short convolution of their own train without the block's (short_conv = 0): the plateau
# ablation (docs/results.md, configs/plateau_ablation.py) measured a second, block-level convolution in
# front of their own holding Gated DeltaNet and Mamba-2 on the 1/P plateau and slowing DeltaNet. Mamba-1
# gained nothing without it (its climb is its learning-rate window) and MoM lost (chance at step 2,500
# without it, 0.12 with it), so both keep the recipe's.
OWN_SHORT_CONV = ("deltanet", "gated_deltanet", "mamba2")


def _frontier_entry(entry) -> dict:
    name = entry if isinstance(entry, str) else entry["name"]
    kwargs = {} if isinstance(entry, str) else entry.get("kwargs", {})
    out = {"name": name, "kwargs": dict(kwargs), "lrs": FRONTIER_LRS.get(name, [1e-3, 3e-3])}
    if name in OWN_SHORT_CONV:
        out["train"] = {"short_conv": 0}
    return out


# KV-cache policies on the frontier's attention models, so the fixed-state memories and a full cache cut to a
# budget share one panel of one task: a sink + recency window (StreamingLLM), the two attention-score rules
# (H2O's accumulated and TOVA's current), the query-window rule (SnapKV), quantisation instead of eviction (KIVI)
# and page retrieval (Quest: every token resident, a budget read). The kv-budget presets evaluate all 21.
FRONTIER_POLICIES = ["streaming", "h2o", "tova", "snapkv", "kivi", "quest"]

PRESETS["frontier"] = {
    "description": "MQAR accuracy vs state bytes: attention + 14 fixed-state memories x widths 32/64/128 at each "
                   "mixer's rate from the recipe study, deltanet, gated_deltanet and mamba2 without the block's short "
                   "conv (the plateau ablation; 75 runs, T=64, 8 pairs, 1,500 steps extended to 3,000 while learning), "
                   "and 6 KV-cache policies on the attention models at 1/32-1/2 of the context",
    # windows are set below the 64 tokens so the window alone cannot hold the whole context
    "spec": {
        "name": "frontier",
        "mixers": [_frontier_entry(e) for e in FRONTIER_MIXERS],
        "tasks": [{"task": "mqar", "kwargs": {"vocab_size": 256, "num_kv_pairs": 8}}],
        "lengths": [64],
        "widths": [32, 64, 128],
        "seeds": [0],
        "n_layers": 2,
        "train": {
            "steps": 1500, "max_steps": 3000, "batch_size": 32, "warmup_steps": 100, "short_conv": 4,
            "eval_every": 100, "eval_examples": 256, "early_stop_accuracy": 0.99, "target_accuracy": 0.99,
            "threads": 1,
        },
        "policies": FRONTIER_POLICIES,
        "budgets": [1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2],
    },
}


# KV-cache policies x budgets: train once, evaluate many. Attention models (the probes' settings, so
# the runs are shared with `probes` in one store) on the three retrieval probes, each then evaluated
# under every registered policy at budgets from 1/64 to 1/2 of the context (query-agnostic protocol,
# evaluate.evaluate_policy). Some policies reject the smallest budgets (streaming keeps 4 sinks:
# 1/64 of 128 tokens is 2): those evaluations are stored as skipped.
KV_BUDGET_TASKS = [t for t in PROBE_TASKS if t["task"] in ("passkey", "niah", "mqar")]

PRESETS["kv-budget"] = {
    "description": "KV-cache policies x budgets: 3 attention runs (passkey, niah, mqar; T=128, width 64) each "
                   "evaluated under every registered policy at 1/64-1/2 of the context",
    "spec": {
        "name": "kv-budget",
        "mixers": ["attention"],
        "tasks": KV_BUDGET_TASKS,
        "lengths": [128],
        "widths": [64],
        "seeds": [0],
        "n_layers": 2,
        "train": dict(PRESETS["probes"]["spec"]["train"]),
        "policies": "all",
        "budgets": [1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2],
    },
}


# The same evaluations on models trained with the next-token loss on every position (issue 15: TOVA,
# Knorm, SirLLM and EM-LLM read attention statistics or surprisal, which a model trained on the answers
# alone never shapes), under all four protocols (policy_protocols). The recipe's budget: 1,500 steps
# extended while learning, lr 1e-3 (where attention converges under the "all" loss in the recipe study).
# NIAH is left out: under this loss its model stays at chance (0.05 at lr 1e-3 and 3e-3, with a noise or a
# repeated-sentence haystack, and after 4,500 steps; docs/results.md), so its evaluations would measure an
# untrained model. The passkey and MQAR runs are the kv-budget ones' tasks, so their ids are unchanged.
PRESETS["kv-budget-next-token"] = {
    "description": "kv-budget on attention models trained with the next-token loss on every position (passkey, "
                   "mqar: niah does not learn under it), every policy under the agnostic, aware, reuse and decode "
                   "protocols (2 runs, 888 evaluations, about an hour on 2 cores)",
    "spec": {
        **PRESETS["kv-budget"]["spec"],
        "name": "kv-budget-next-token",
        "tasks": [t for t in KV_BUDGET_TASKS if t["task"] != "niah"],
        "train": {"steps": 1500, "max_steps": 4500, "batch_size": 32, "lr": 1e-3, "warmup_steps": 100,
                  "short_conv": 4, "eval_every": 100, "eval_examples": 256, "early_stop_accuracy": 0.99,
                  "target_accuracy": 0.99, "loss_on": "all", "threads": 1},
        "protocols": ["agnostic", "aware", "reuse", "decode"],
    },
}


# The recipe study (docs/results.md, "The training recipe"): every registered mixer at width 64 on
# MQAR (T=64, 4 pairs, vocabulary 256) under both losses and three learning rates, each run stopped
# at 0.99 held-out accuracy, at `steps` when it has stopped improving, or extended while it is still
# learning up to `max_steps` (convergence.py). Mixers slowest per step come last, so a partial run of
# the preset has covered the most mixers. Windows as in the frontier preset (below the context).
RECIPE_LRS = [3e-4, 1e-3, 3e-3]
RECIPE_TRAIN = {
    "steps": 1500, "max_steps": 4500, "batch_size": 32, "warmup_steps": 100, "short_conv": 4,
    "eval_every": 100, "eval_examples": 256, "early_stop_accuracy": 0.99, "target_accuracy": 0.99, "threads": 1,
}
RECIPE_MIXERS = [
    ("attention", {}), ("sliding_window", {"window": 32}), ("linear_attention", {}), ("mamba", {}), ("s4d", {}),
    ("mlstm", {}), ("retnet", {}), ("deltanet", {}), ("gla", {}), ("mamba2", {}), ("gated_deltanet", {}),
    ("rwkv6", {}), ("based", {"window": 16}), ("mom", {}), ("titans", {}),
]


def _recipe_configs() -> list[dict]:
    configs = []
    for mixer, kwargs in RECIPE_MIXERS:
        for loss_on in ("answers", "all"):
            for lr in RECIPE_LRS:
                configs.append({
                    **RECIPE_TRAIN, "layers": [mixer, mixer], "mixer_kwargs": dict(kwargs), "d_model": 64,
                    "task": "mqar", "task_kwargs": {"vocab_size": 256, "seq_len": 64, "num_kv_pairs": 4},
                    "loss_on": loss_on, "lr": lr, "seed": 0,
                })
    return configs


PRESETS["recipe"] = {
    "description": "the recipe study: every mixer at width 64 on MQAR (T=64, 4 pairs, vocab 256) x loss on answers "
                   "/ every position x lr 3e-4, 1e-3, 3e-3 (90 runs, 1,500 steps extended to 4,500 while learning)",
    "spec": {"name": "recipe", "configs": _recipe_configs()},
}


# Issue 13's comparisons. Arguments that depend on the length (S4's C~ length, the long filters'
# lengths, MultiresConv's depth) are set to each run's own T (``seq_len_kwargs``), as Zoology sets
# ``l_max = input_seq_len`` and as each paper trains at its length; a fixed longest T would make every
# shorter run compute its kernel at that length (S4 at l_max 4,096 costs about as much at T=277 as at
# 4,096) and a T just above a power of two double it. Each preset's cost on 2 cores is estimated from
# `docs/bench/train-steps-issue13-2026-12-07/`.
ZOOLOGY_TASKS = PRESETS["zoology-mqar"]["spec"]["tasks"]
ZOOLOGY_TRAIN = PRESETS["zoology-mqar"]["spec"]["train"]

PRESETS["gated-convs"] = {
    "description": "Zoology Figure 2 at CPU scale: attention, base_conv, h3, hyena, rwkv6, s4d x widths 64/128 x "
                   "(T, kv pairs) = (64, 4), (128, 8), (256, 16) x lr 1e-3, 3e-3 (72 runs on the recipe; "
                   "about 4-6 h with 2 workers)",
    # Zoology: vocab 8192, widths 64-512, the best of 4 rates, a BaseConv short conv in every model.
    # Published direction: attention solves every (T, pairs) at every width; gated convolutions need
    # width growing with T (at (256, 16): H3 0.08 -> 0.66, Hyena 0.05 -> 0.68 from width 64 to 512).
    "spec": {
        "name": "gated-convs",
        "mixers": ["attention", {"name": "base_conv", "seq_len_kwargs": ["l_max"]}, "h3",
                   {"name": "hyena", "seq_len_kwargs": ["l_max"]}, "rwkv6", "s4d"],
        "tasks": ZOOLOGY_TASKS,
        "widths": [64, 128],
        "seeds": [0],
        "lrs": [1e-3, 3e-3],
        "n_layers": 2,
        "train": dict(ZOOLOGY_TRAIN),
    },
}

# the long-sequence presets' recipe: one rate (the recipe study's best for Mamba), a shorter budget
LONG_TRAIN = {
    "steps": 1000, "max_steps": 2000, "lr": 1e-3, "warmup_steps": 100, "short_conv": 4, "eval_every": 100,
    "early_stop_accuracy": 0.99, "target_accuracy": 0.99, "threads": 1,
}

# Long Range Arena's ListOps (Tay et al. 2021: depth 10, up to 10 arguments, 500-2,000 tokens) at the
# lengths a CPU trains: every structured state space and long convolution beside attention and Mamba,
# except STU, whose exact parameterisation (a D x D matrix per spectral filter, 48 of them) makes its
# training step 11x attention's (docs/bench/train-steps-issue13-2026-12-07/): hours per run at T=1,024
LONG_MIXERS = [
    "attention", "s4d", "mamba", {"name": "s4", "seq_len_kwargs": ["l_max"]}, "lssl", "dss", "lru", "h3",
    {"name": "hyena", "seq_len_kwargs": ["l_max"]}, {"name": "base_conv", "seq_len_kwargs": ["l_max"]},
    {"name": "multires", "seq_len_kwargs": ["max_len"]}, "lem", "lstm", "gru",
]

PRESETS["lra-listops"] = {
    "description": "ListOps (LRA's depth and arity) at T=512 and 1,024: attention, mamba and 12 structured SSMs, "
                   "long convolutions and RNNs, width 64, lr 1e-3 (28 runs, up to 2,000 steps at batch 16; "
                   "several hours on 2 cores)",
    "spec": {
        "name": "lra-listops",
        "mixers": LONG_MIXERS,
        "tasks": [{"task": "listops", "kwargs": {"max_depth": 9, "max_args": 10}}],
        "lengths": [512, 1024],
        "widths": [64],
        "seeds": [0],
        "n_layers": 2,
        "train": {**LONG_TRAIN, "batch_size": 16, "eval_examples": 256},
    },
}

# The copying-memory problem (Arjovsky et al. 2016; the benchmark of HiPPO, LSSL, S4 and LEM): 10
# symbols kept across delays up to 4,096 blanks, where an LTI kernel can hold them and a gated RNN's
# state decays. T = 2 * 10 + delay + 1.
PRESETS["delayed-copy"] = {
    "description": "10 symbols across delays of 256, 1,024 and 4,096 blanks: s4, lssl, s4d, dss, lru, lem, lstm, "
                   "gru, mamba, width 64 (27 runs, up to 2,000 steps at batch 8; many hours on 2 cores)",
    "spec": {
        "name": "delayed-copy",
        "mixers": [{"name": "s4", "seq_len_kwargs": ["l_max"]}, "lssl", "s4d", "dss", "lru", "lem", "lstm", "gru",
                   "mamba"],
        "tasks": [{"task": "delayed_copy", "kwargs": {"n_symbols": 10, "alphabet_size": 8}}],
        "lengths": [277, 1045, 4117],
        "widths": [64],
        "seeds": [0],
        "n_layers": 2,
        "train": {**LONG_TRAIN, "batch_size": 8, "eval_examples": 128},
    },
}


# Issue 14: the memory-augmented transformers beside full attention and a window of the same reach, on
# three retrieval probes at lengths 4-8x their segment / window (64 tokens), so that what a memory
# answers beyond its local context is what its memory kept.
MEMORY_TRANSFORMERS = [
    "attention", {"name": "sliding_window", "kwargs": {"window": 64}}, "transformer_xl", "compressive", "infini",
    "ahn", "rat", "memorizing", {"name": "memorizing", "kwargs": {"memory_size": 128}},
    # the memory-token models around attention layers: 64-token segments, 8 memory vectors, BPTT through all
    {"name": "attention", "model": "rmt", "model_kwargs": {"segment_len": 64, "num_memory": 8}},
    {"name": "attention", "model": "memformer", "model_kwargs": {"segment_len": 64, "num_memory": 8}},
    # two fixed-state recurrent memories on the same panels, at their frontier rates and without the block's
    # short conv (OWN_SHORT_CONV), so a memory beside attention is read against a memory instead of attention
    {"name": "deltanet", "lrs": [3e-3], "train": {"short_conv": 0}},
    {"name": "gated_deltanet", "lrs": [1e-3], "train": {"short_conv": 0}},
]

PRESETS["memory-transformers"] = {
    "description": "memory-augmented transformers (transformer_xl, compressive, infini, ahn, rat, memorizing, rmt, "
                   "memformer) with attention, a 64-token window, deltanet and gated_deltanet on passkey, MQAR and "
                   "fact_update at T=256, 512, width 64, the best of lr 1e-3, 3e-3 (144 runs; many hours on 2 cores), "
                   "and 6 KV-cache policies on the attention models: every kind of memory on one frontier",
    "spec": {
        "name": "memory-transformers",
        "mixers": MEMORY_TRANSFORMERS,
        "tasks": [t for t in PROBE_TASKS if t["task"] in ("passkey", "mqar", "fact_update")],
        "lengths": [256, 512],
        "widths": [64],
        "seeds": [0],
        "lrs": [1e-3, 3e-3],
        "n_layers": 2,
        "train": {**ZOOLOGY_TRAIN, "batch_size": 16, "eval_every": 100, "eval_examples": 256},
        "policies": FRONTIER_POLICIES,
        "budgets": [1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2],
    },
}


# Hybrids (issue 14): Samba and a Jamba-style stack against their pure parts at equal depth (4 layers),
# on MQAR where the window alone cannot see the keys (T=256, 16 pairs; window 32)
def _hybrid_configs() -> list[dict]:
    stacks = [architecture("samba", 4), architecture("jamba", 4, attention_every=4),
              ["mamba"] * 4, ["attention"] * 4, ["sliding_window"] * 4]
    return [{**RECIPE_TRAIN, "layers": layers, "mixer_kwargs": {"sliding_window": {"window": 32}}, "d_model": 64,
             "task": "mqar", "task_kwargs": {"vocab_size": 256, "seq_len": 256, "num_kv_pairs": 16},
             "lr": 1e-3, "steps": 1500, "max_steps": 3000, "batch_size": 16, "seed": 0} for layers in stacks]


PRESETS["hybrids"] = {
    "description": "Samba (mamba + window, alternating) and a Jamba-style stack (one attention in four) against "
                   "4 layers of mamba, attention or a 32-token window on MQAR T=256, 16 pairs (5 runs, lr 1e-3, "
                   "1,500 steps extended to 3,000 while learning)",
    "spec": {"name": "hybrids", "configs": _hybrid_configs()},
}


def get_preset(name: str) -> dict:
    if name not in PRESETS:
        raise KeyError(f"Unknown preset {name!r}. Available presets: {', '.join(PRESETS)}")
    return PRESETS[name]["spec"]
