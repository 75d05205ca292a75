"""Do the frontier's plateau points leave the plateau with more steps?

The `frontier` preset stops a run at 1,500 steps when its held-out accuracy and loss stopped improving
(convergence.py, ``plateau``), and MQAR is learned in an abrupt transition after a long plateau: Gated
DeltaNet at width 128 sat at chance for 800 steps, then converged by step 2,600. This spec re-trains
some of the frontier's plateau cells with the same recipe but 6,000 steps and no plateau stop (``steps``
= ``max_steps``: a run ends early only at the target accuracy), to tell a memory's limit from a budget.

    longrecall arena configs/frontier_plateaus.py --store runs/frontier_plateaus.db --executor process --workers 2

Results and what they change in the frontier's reading: docs/results.md ("The frontier preset").
"""

from longrecall.arena.presets import OWN_SHORT_CONV, PRESETS

FRONTIER = PRESETS["frontier"]["spec"]
TASK = FRONTIER["tasks"][0]

# (mixer, width, lr): cells that ended on the plateau at 1,500 steps in runs/frontier.db, each at the
# rate at which a neighbouring width of the same mixer learned
CELLS = [
    ("gated_deltanet", 64, 1e-3),  # width 128 converged at this rate after 800 steps at chance
    ("mamba2", 32, 1e-3),  # width 64 still learning at 3,000 steps (0.64)
    ("mamba", 64, 1e-3),  # width 128 still learning at 3,000 steps (0.15)
]

configs = [
    {**FRONTIER["train"], "steps": 6000, "max_steps": 6000, "layers": [mixer, mixer], "d_model": width, "lr": lr,
     "short_conv": 0 if mixer in OWN_SHORT_CONV else FRONTIER["train"]["short_conv"],
     "task": TASK["task"], "task_kwargs": {**TASK["kwargs"], "seq_len": FRONTIER["lengths"][0]}, "seed": 0}
    for mixer, width, lr in CELLS
]
