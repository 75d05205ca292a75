"""The scripts behind docs/results.md's preset tables (configs/*_table.py) run on a store and print a
markdown table with a row per mixer: a table published from a command must stay reproducible."""

import subprocess
import sys
from pathlib import Path

import pytest

from longrecall.arena import run_arena

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TRAIN = {"steps": 2, "batch_size": 4, "eval_every": 2, "eval_examples": 8}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    mqar = {"name": "m", "mixers": ["attention", {"name": "base_conv", "seq_len_kwargs": ["l_max"]}],
            "tasks": [{"task": "mqar", "kwargs": {"vocab_size": 32, "num_kv_pairs": 4}, "lengths": [64]}],
            "widths": [16], "lrs": [1e-3, 3e-3], "train": TRAIN}
    listops = {"name": "l", "mixers": ["attention", {"name": "s4", "seq_len_kwargs": ["l_max"]}],
               "tasks": [{"task": "listops", "kwargs": {"max_depth": 3, "max_args": 3}}], "lengths": [48, 64],
               "widths": [16], "train": TRAIN}
    run_arena(mqar, store=root / "mqar.db", progress=False)
    run_arena(listops, store=root / "listops.db", progress=False)
    return root


def table(script, *args):
    out = subprocess.run([sys.executable, str(CONFIGS / script), *map(str, args)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if line.startswith("|")]


def test_gated_convs_table(stores):
    lines = table("gated_convs_table.py", stores / "mqar.db")
    rows = {line.split(" | ")[0].strip("| "): line for line in lines[2:]}
    assert set(rows) == {"attention", "base_conv", "h3", "hyena", "rwkv6", "s4d"}
    assert "(64, 4) D=16" in lines[0] and "Zoology" in lines[0]
    assert " C (" in rows["attention"] or " L (" in rows["attention"] or " P (" in rows["attention"]
    assert ".15 -> .92" in rows["base_conv"]  # the published column, beside the measured cell


def test_long_table(stores):
    lines = table("long_table.py", stores / "listops.db")
    assert "T=48" in lines[0] and "T=64" in lines[0] and "LRA ListOps" in lines[0]
    assert {line.split(" | ")[0].strip("| ") for line in lines[2:]} == {"attention", "s4"}


def test_frontier_table(stores):
    lines = table("frontier_table.py", stores / "mqar.db", "--width", "16")
    assert lines[0].startswith("| mixer | D=16 |")
    assert len(lines) == 4  # header, rule, attention and base_conv
