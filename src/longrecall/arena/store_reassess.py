"""Stored convergence statuses under the current rule, and the runs a stricter earlier rule stopped too soon.

A run's ``convergence`` column is the status ``longrecall.convergence`` gave it when it finished. When the
rule's thresholds change (``convergence.RULE_VERSION``), ``Store.reassess`` recomputes the column of
every finished ``learning`` or ``plateau`` run from the histories the row holds (``converged`` and
``diverged`` do not depend on the thresholds and are kept). With ``reopen=True`` it also puts back to
``pending`` each run that stopped on a plateau at or after ``steps`` and below ``max_steps`` which the
current rule would not have stopped there: one it finds still learning, or (rule version 3) one whose
accuracy never left chance: the arena then resumes it from its checkpoint, and because the
schedule's horizon is ``max_steps`` (train.lr_lambda) the continued run is step for step the run the
current rule would have trained from the start. Its metrics row is replaced when it finishes, and its
KV-cache policy evaluations, made on the stopped model, are deleted (the arena makes them again).
"""

from __future__ import annotations

from typing import Collection

from ..convergence import stops_on_plateau
from .store_schema import _decode, convergence_of

__all__ = ["ReassessMixin"]


def _continuable(config: dict, steps: int | None) -> bool:
    """Whether a run stopped at ``steps`` stopped on the convergence rule (between steps and max_steps)."""
    max_steps, min_steps = config.get("max_steps"), config.get("steps")
    return (max_steps is not None and steps is not None and min_steps is not None
            and min_steps <= steps < max_steps)


def _chance(row: dict) -> float | None:
    """The run's task chance accuracy: stored with its final evaluation, else from the task its config
    builds (rows written before the chance was stored)."""
    chance = (row.get("metrics") or {}).get("chance")
    if chance is None:
        from ..config import TrainConfig
        from ..train import make_task

        try:
            chance = make_task(TrainConfig(**row["config"])).chance_accuracy()
        except (KeyError, TypeError, ValueError):  # a config or task this version no longer builds: unknown
            chance = None
    return chance


class ReassessMixin:
    """``Store.reassess``: the convergence column under the current rule (see the module docstring)."""

    def reassess(self, run_ids: Collection[str] | None = None, *, reopen: bool = False) -> list[dict]:
        """Recompute the status of finished ``learning``/``plateau`` runs (among ``run_ids`` when given);
        returns one ``{"id", "labels", "was", "now", "steps", "reopened"}`` per changed or reopened run.
        ``reopen``: plateau stops below ``max_steps`` that the current rule would train on go back to pending
        (see the module docstring)."""
        wanted = None if run_ids is None else set(run_ids)
        changes = []
        with self._write() as conn:
            rows = conn.execute("SELECT * FROM runs WHERE status = 'done' AND convergence IN ('learning', 'plateau')")
            for row in [_decode(r) for r in rows]:
                if wanted is not None and row["id"] not in wanted:
                    continue
                now = convergence_of(row["config"], row.get("history") or [], row.get("evals") or [])
                trains_on = now == "learning" or (now == "plateau"
                                                  and not stops_on_plateau(row.get("evals") or [], _chance(row)))
                reopened = (reopen and row["convergence"] == "plateau" and trains_on
                            and _continuable(row["config"], row.get("steps")))
                if now == row["convergence"] and not reopened:
                    continue
                if reopened:  # its KV-policy evaluations measured the stopped model: they go too
                    conn.execute("UPDATE runs SET status = 'pending', owner = NULL, convergence = ? WHERE id = ?",
                                 (now, row["id"]))
                    conn.execute("DELETE FROM policy_evals WHERE run_id = ?", (row["id"],))
                else:
                    conn.execute("UPDATE runs SET convergence = ? WHERE id = ?", (now, row["id"]))
                changes.append({"id": row["id"], "labels": row.get("labels") or {}, "was": row["convergence"],
                                "now": now, "steps": row.get("steps"), "reopened": reopened})
        return changes
