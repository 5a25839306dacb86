"""Replicates that are one run: a file's runs on other seeds must be independent measurements.

The judge averages a file's replicates on several seeds so that one lucky run cannot carry a promotion. That
only works if the runs are independent: a script that pins its seed past the harness's offsets (say, seeding
``torch._C.default_generator`` itself) repeats its first run on every seed, and the confirmation rounds then
confirm the same luck. A digest of the weights catches a bit-identical copy, not a copy nudged by one ulp, so the
check compares what the runs *predict*: the evaluator's log-probabilities of fixed validation targets
(``trainer.evaluate.fingerprint``). Honest replicates of one file on other seeds differ there by far more than the
profile's ``replicate_min_distance`` (measured: docs/bench/replicate-distance.md); a later run closer than that to
an earlier one on another seed is ``invalid``, naming the earlier run.

The check is rebuilt from the ledger (its rows carry both the digest and the fingerprint), by the same code as
live, so a farm resumed after a crash still knows every earlier run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cluster.records.ledger import LedgerRow
from trainer.result import prediction_distance


@dataclass(frozen=True)
class _Run:
    experiment_id: str
    seed: int
    weights: str | None
    fingerprint: str | None


class IndependenceCheck:
    """Every ok run seen so far, per train.py; says why a new run is the same run as an earlier one."""

    def __init__(self, min_distance: float, rows: Iterable[LedgerRow] = ()) -> None:
        self.min_distance = min_distance
        self._runs: dict[str, list[_Run]] = {}
        for row in rows:
            self.same_run(row)

    def same_run(self, row: LedgerRow) -> str | None:
        """Why ``row`` (a finished run) repeats an earlier ok run of its file on another seed, or None; an ok run
        that does not is remembered for the runs after it."""
        if row.status != "ok" or not row.train_sha:
            return None
        seed = row.seed or 0
        runs = self._runs.setdefault(row.train_sha, [])
        for earlier in runs:
            if earlier.experiment_id == row.experiment_id:
                return None  # seen already (a row read back after a resume)
            if earlier.seed == seed:
                continue  # the same seed may repeat a run: that is what a seed is for
            if row.weights_sha256 and row.weights_sha256 == earlier.weights:
                return (f"bit-identical weights to {earlier.experiment_id} (seed {earlier.seed}) on seed {seed}: the "
                        "script pins its seed, so its replicates are not independent measurements")
            if row.fingerprint and earlier.fingerprint:
                distance = prediction_distance(row.fingerprint, earlier.fingerprint)
                if distance < self.min_distance:
                    return (f"predicts what {earlier.experiment_id} (seed {earlier.seed}) predicts, on seed {seed}: "
                            f"log-probabilities {distance:.2g} nats apart (RMS), where replicates on other seeds "
                            f"differ by at least {self.min_distance:g}; the script pins its seed, so its replicates "
                            "are one run, not independent measurements")
        runs.append(_Run(row.experiment_id, seed, row.weights_sha256, row.fingerprint))
        return None
