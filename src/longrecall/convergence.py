"""Convergence status of a training run, from its stored loss and held-out histories.

A trained model's accuracy says something about its memory only if training got as far as it
could: MQAR is learned in an abrupt phase transition after a long plateau, and a model stopped on
the plateau scores chance whatever its capacity.  Every run therefore carries one of four statuses,
computed from what the run stores (``history``: the training loss per step; ``evals``: held-out
accuracy at each evaluation):

``converged``
    the final held-out accuracy reached the target (``TrainConfig.target_accuracy``).
``learning``
    not converged, and still improving over the last part of training (the last
    ``WINDOW_FRACTION`` of its steps): the mean held-out accuracy of the evaluations in that window
    is at least ``MIN_ACCURACY_GAIN`` above the mean of the window before (means, not single
    evaluations, so one noisy evaluation neither starts nor ends a trend), or the mean training loss
    fell by at least ``MIN_LOSS_DROP`` (relative) between the two windows.  Its accuracy is a lower
    bound: more steps would raise it.
``plateau``
    not converged and no such improvement.  Either the memory's capacity at this size, or a
    training plateau that more steps or another learning rate might leave (MQAR's pre-transition
    plateau looks the same); a plateau point is a lower bound too, unless other evidence (a longer
    run, another learning rate) shows the same accuracy.
``diverged``
    the loss became NaN or infinite, or ended far above its best (``DIVERGED_LOSS_RATIO``).

``status`` is a pure function of those histories, so stores written before statuses existed get
theirs computed from the rows they already hold.  The training loop asks the same function
whether a run that reached ``steps`` may continue towards ``max_steps`` (only while ``learning``).

The thresholds (rule version ``RULE_VERSION``) are measured, not chosen. Version 1 asked for 0.01 of
accuracy or 2% of loss; in the frontier preset it stopped four runs at 1,500 steps as plateaus (Gated
DeltaNet at widths 32 and 64, Mamba-2 at 32, Mamba at 64, all at 0.02-0.03 accuracy) that had gained
0.0067-0.0095 accuracy and 1.2-1.8% loss in their last quarter. Re-trained for 6,000 steps, the three
of them tried all left chance (Gated DeltaNet converged at 5,200 steps, Mamba-2 reached 0.80, Mamba
0.13); the other plateaus of that store had gained at most 0.0035 accuracy and 0.4% loss (docs/results.md,
"The frontier preset"). Version 2 halves both thresholds. It stops fewer slow starters, not none:
continued under version 2, Mamba at width 64 stopped again at step 1,700 (0.0045 and 0.96%), so a
plateau near chance stays a lower bound, as the status list above says.

Version 3 keeps the statuses and changes when a run may stop on one: a ``plateau`` whose held-out
accuracy has never left chance (every evaluation below ``NEAR_CHANCE_MULTIPLE`` times the task's chance
accuracy, ``Task.chance_accuracy``, and below chance plus ``NEAR_CHANCE_MARGIN`` or three standard errors
of a guesser, which decide for tasks with few classes, e.g. 0.59 for a yes/no task scored on 256
answers) trains on to ``max_steps`` (:func:`stops_on_plateau`). Near chance the trend
cannot separate MQAR's pre-transition plateau from a capacity limit: of the 56 plateau stops in the
frontier, recipe and hybrids stores, 53 had never passed 4.8x chance, the three slow starters above among
them; the other three (a window at 0.81, linear attention at 0.93, DeltaNet at 0.97) sat far above it. A run at
chance after ``max_steps`` is still labelled ``plateau``, but at the cap of its budget rather than at its
start. Tasks without a chance accuracy keep version 2's stops.
A run's stored status is the rule's at the time it finished: ``Store.reassess`` recomputes the stored
statuses under the current rule and ``longrecall arena --reassess`` continues, from their checkpoints,
the runs it now finds still learning.
"""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["STATUSES", "CONVERGED_STATUSES", "status", "assess", "near_chance", "stops_on_plateau",
           "WINDOW_FRACTION", "MIN_ACCURACY_GAIN", "MIN_LOSS_DROP", "NEAR_CHANCE_MULTIPLE", "NEAR_CHANCE_MARGIN",
           "NEAR_CHANCE_NOISE", "DIVERGED_LOSS_RATIO",
           "RULE_VERSION"]

STATUSES = ("converged", "learning", "plateau", "diverged")
CONVERGED_STATUSES = ("converged",)  # every other status marks the accuracy as a lower bound

WINDOW_FRACTION = 0.25  # "the last part of training": its last quarter of steps
MIN_ACCURACY_GAIN = 0.005  # absolute held-out accuracy gained within that window (version 1: 0.01)
MIN_LOSS_DROP = 0.01  # relative fall of the mean training loss, previous window -> last window (version 1: 0.02)
NEAR_CHANCE_MULTIPLE = 5.0  # "never left chance": best held-out accuracy below this multiple of chance (version 3)
NEAR_CHANCE_MARGIN = 0.05  # ... and below chance + this (binding where chance is above 1/80: few-class tasks)
NEAR_CHANCE_NOISE = 3.0  # ... or this many binomial standard errors of an evaluation at chance, when wider
RULE_VERSION = 3  # bumped whenever a threshold changes (see the module docstring); in every assess() result
DIVERGED_LOSS_RATIO = 2.0  # final window's mean loss above this multiple of the best window's mean


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _window_means(history: Sequence[dict], start: int, end: int) -> float | None:
    """Mean training loss over steps in (start, end]; None when there is none or it is not finite."""
    losses = [h.get("loss") for h in history if start < h.get("step", 0) <= end]
    if not losses or not all(_finite(x) for x in losses):
        return None
    return sum(losses) / len(losses)


def near_chance(evals: Sequence[dict], chance: float | None) -> bool:
    """Whether every held-out accuracy so far is below ``min(NEAR_CHANCE_MULTIPLE * chance, chance + margin)``,
    the margin ``NEAR_CHANCE_MARGIN`` or, when an evaluation's ``scored`` answers are few, ``NEAR_CHANCE_NOISE``
    standard errors of a guesser at chance (a yes/no task scored on 256 answers: 0.094, so the best of
    twenty evaluations at chance does not count as leaving it). False when the task has no chance accuracy
    or there is no evaluation."""
    if not _finite(chance) or not 0 < chance < 1:
        return False
    accs = [(e["accuracy"], e.get("scored")) for e in evals if _finite(e.get("accuracy"))]
    if not accs:
        return False

    def line(scored) -> float:
        noise = NEAR_CHANCE_NOISE * math.sqrt(chance * (1 - chance) / scored) if _finite(scored) and scored > 0 else 0.0
        return min(NEAR_CHANCE_MULTIPLE * chance, chance + max(NEAR_CHANCE_MARGIN, noise))

    return all(accuracy < line(scored) for accuracy, scored in accs)


def stops_on_plateau(evals: Sequence[dict], chance: float | None) -> bool:
    """Whether a run the rule calls ``plateau`` may stop before ``max_steps``: not while it is near chance
    (rule version 3, see the module docstring)."""
    return not near_chance(evals, chance)


def assess(history: Sequence[dict], evals: Sequence[dict], target_accuracy: float | None,
           *, diverged: bool = False, chance: float | None = None) -> dict:
    """The status and the numbers behind it.

    Args:
        history: per-step dicts with ``step`` and ``loss`` (training loss).
        evals: held-out evaluations, dicts with ``step`` and ``accuracy``, in step order.
        target_accuracy: held-out accuracy that counts as converged (None: no run converges).
        diverged: the run stopped on a non-finite loss.
        chance: the task's chance accuracy, for ``near_chance`` (None: unknown).

    Returns ``{"status", "final_accuracy", "best_accuracy", "accuracy_gain", "loss_drop",
    "window_steps", "steps", "near_chance", "rule_version"}``; the gains are None when there is not enough history to
    measure them. ``train`` writes this dict to a run's metrics as ``convergence_detail``, so a run records
    which version of the rule judged it.
    """
    steps = max([h.get("step", 0) for h in history] + [e.get("step", 0) for e in evals] + [0])
    accs = [(e.get("step", 0), e.get("accuracy")) for e in evals if _finite(e.get("accuracy"))]
    final = accs[-1][1] if accs else None
    out = {"status": None, "final_accuracy": final, "best_accuracy": max((a for _, a in accs), default=None),
           "accuracy_gain": None, "loss_drop": None, "window_steps": 0, "steps": steps,
           "near_chance": near_chance(evals, chance), "rule_version": RULE_VERSION}
    losses = [h.get("loss") for h in history]
    if diverged or any(x is not None and not _finite(x) for x in losses):
        out["status"] = "diverged"
        return out
    if final is not None and target_accuracy is not None and final >= target_accuracy:
        out["status"] = "converged"
        return out

    window = max(1, int(round(steps * WINDOW_FRACTION)))
    out["window_steps"] = window
    start = steps - window
    last_accs = [a for s, a in accs if s > start]
    previous_accs = [a for s, a in accs if start - window < s <= start] or [a for s, a in accs if s <= start][-1:]
    if last_accs and previous_accs:
        out["accuracy_gain"] = sum(last_accs) / len(last_accs) - sum(previous_accs) / len(previous_accs)
    last, previous = _window_means(history, start, steps), _window_means(history, start - window, start)
    if last is not None and previous is not None and previous > 0:
        out["loss_drop"] = (previous - last) / previous
    if last is not None and history:
        best = min(m for m in (_window_means(history, s - window, s) for s in range(window, steps + 1, window))
                   if m is not None) if steps >= window else last
        if best > 0 and last > DIVERGED_LOSS_RATIO * best:
            out["status"] = "diverged"
            return out
    improving = (out["accuracy_gain"] is not None and out["accuracy_gain"] >= MIN_ACCURACY_GAIN) or \
                (out["loss_drop"] is not None and out["loss_drop"] >= MIN_LOSS_DROP)
    # too short a history to see a trend (a single evaluation, no earlier window): still learning
    unmeasured = out["accuracy_gain"] is None and out["loss_drop"] is None
    out["status"] = "learning" if improving or unmeasured else "plateau"
    return out


def status(history: Sequence[dict], evals: Sequence[dict], target_accuracy: float | None,
           *, diverged: bool = False) -> str:
    """One of :data:`STATUSES` (see the module docstring)."""
    return assess(history, evals, target_accuracy, diverged=diverged)["status"]
