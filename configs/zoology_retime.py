"""Re-time zoology-mqar runs: the preset's resolved configs (same run ids) for a chosen subset.

docs/results.md measured the preset's runtime this way: the runs first timed on a loaded machine
(every attention and sliding_window run, and s4d at T=64) were re-run on an idle one into a second
store, and their seconds replaced the loaded ones. Their accuracies matched the first runs exactly.

    longrecall arena configs/zoology_retime.py --store runs/zoology-retime.db --executor local
"""
import copy

from longrecall.arena.presets import PRESETS
from longrecall.arena.spec import ArenaSpec

name = "zoology-mqar"
_runs = ArenaSpec.from_dict(copy.deepcopy(PRESETS["zoology-mqar"]["spec"])).expand()


def _wanted(labels: dict) -> bool:
    return labels["mixer"] in ("attention", "sliding_window") or (labels["mixer"] == "s4d" and labels["seq_len"] == 64)


configs = [run.config for run in _runs if _wanted(run.labels)]
