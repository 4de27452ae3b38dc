"""Checks any stage may run on a runner, without one stage importing another: batch invariance (the
same image gives the same output alone, in a batch, and in a shuffled batch). convert runs it on a
model being imported; validate on the reference and on every artifact."""

from __future__ import annotations

import numpy as np

from exporter import outputs as out_mod
from exporter.data.datasets import stratified_indices
from exporter.runtimes import Runner

BATCH_SAMPLE = 256          # test images in the batch-invariance check
BATCH_SINGLES = 32          # of those, run one image per call
REFERENCE_BATCH_TOLERANCE = 1e-3
BATCH_CAUSE = "BatchNormalization or a random layer ran in training mode"


def batch_sample(dataset) -> np.ndarray:
    """The fixed test images of the batch-invariance check: stratified, the same on every run."""
    n = min(BATCH_SAMPLE, len(dataset.y_test))
    return stratified_indices(dataset.y_test, n, seed=7)


def batch_invariance(runner: Runner, dataset, *, batch_size: int, convention: str, tolerance: float) -> dict:
    """Run the sample one image at a time, in batches of the validation batch size, and in those
    batches shuffled; the outputs (as probabilities) must agree within `tolerance`."""
    idx = batch_sample(dataset)
    x = dataset.x_test[idx]
    n = len(x)
    batch = batch_size if batch_size > 1 else n
    as_p = lambda y: out_mod.to_probabilities(y, convention)  # noqa: E731
    batched = as_p(runner.predict_batched(x, batch))
    k = min(BATCH_SINGLES, n)
    singles = as_p(np.concatenate([runner.predict(x[i: i + 1]) for i in range(k)]))
    perm = np.random.default_rng(7).permutation(n)
    shuffled = np.empty_like(batched)
    shuffled[perm] = as_p(runner.predict_batched(x[perm], batch))
    finite = bool(np.all(np.isfinite(batched)) and np.all(np.isfinite(singles)) and np.all(np.isfinite(shuffled)))
    d_single = float(np.abs(singles - batched[:k]).max()) if finite else float("inf")
    d_shuffled = float(np.abs(shuffled - batched).max()) if finite else float("inf")
    flips = int((singles.argmax(1) != batched[:k].argmax(1)).sum() + (shuffled.argmax(1) != batched.argmax(1)).sum())
    return {"sample": n, "singles": k, "batch": min(batch, n), "max_diff_batch_1": d_single,
            "max_diff_shuffled": d_shuffled, "top1_flips": flips, "tolerance": tolerance,
            "passed": finite and max(d_single, d_shuffled) <= tolerance}


def batch_problem(b: dict) -> str:
    return (f"outputs depend on the batch: {BATCH_CAUSE} (max |diff| {b['max_diff_batch_1']:.2e} between batch 1 "
            f"and batch {b['batch']}, {b['max_diff_shuffled']:.2e} with the batch shuffled; tolerance "
            f"{b['tolerance']:.0e}; top-1 changed {b['top1_flips']} times)")
