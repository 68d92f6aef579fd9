"""`fgc diagnose`: how good are an algorithm's forward-gradient estimates?

For a spec and a forward-gradient algorithm, :func:`diagnose` measures on a few batches
of real (or synthetic) data, for every block instance and parameter group:

* the **cosine similarity** of the estimate with the true gradient of the loss the
  algorithm targets (the exact gradient under the same stop-gradient structure: LG-FG-A
  and LG-FG-W target the greedy local losses like LG-BP, FG-A and FG-W the final loss
  like BP) and with the **end-to-end** gradient (BP's), averaged over draws and batches;
* the **variance** of the estimate, ``Σᵢ Var[ĝᵢ] / ‖g‖²`` over ``draws`` independent
  estimates of the same batch (``g`` the target gradient), which falls like ``1/K`` with
  ``K`` tangents;

for each ``K`` in ``tangents``, and for **weight and activity perturbation side by side**:
whichever the user names, both estimators of the same target and greediness are run
(the algorithm with ``perturb = weights`` and with ``perturb = activity``; its noise
distribution is kept, and parameter groups that set their own estimator keep it).

Per layer it then compares the measured variance ratio weight/activity with the one
REFERENCE §6 Table 1 predicts for a single linear layer of fan-in ``p`` and fan-out ``q``
on a batch of ``N``. Table 1 counts the variance of the noise and of sampling the batch;
for a fixed batch (what is measured here: draws differ in the noise only) it reads

    weight perturbation   (pq + 1) · S           one noise draw shared by the batch
    activity perturbation (q + 1) · (S + V) / N  independent noise per example

with ``S = ‖ḡ‖²/D`` the squared batch-mean gradient and ``S + V = mean_n ‖g_n‖²/D`` the mean
squared per-example gradient (per dimension, ``D = pq``; adding Table 1's sampling terms
``V/N`` to both gives its rows back). The predicted ratio is therefore

    ratio = (pq + 1) / (q + 1) · N · S / (S + V)  ≈  fan-in × N × coherence,

between ``p`` (incoherent per-example gradients) and ``p·N`` (all examples agree); ``S`` and
``V`` are measured from exact per-example gradients. For a group-linear layer ``p`` and ``q``
are per group. The single-layer model leaves out what a real block adds: every layer of a
block is perturbed at once, so other layers' noise enters each directional derivative;
replicated losses credit each patch and group separately; a weight shared over ``P``
patches averages ``N·P`` independent activity-noise draws. The measured ratio shows how
far these move a network from Table 1.

The end-to-end gradient needs a trained readout: the readout head is zero-initialised,
so at initialisation the end-to-end gradient of every backbone parameter is exactly zero.
:func:`diagnose` therefore first trains ``warmup_steps`` steps (default 20) **with the
algorithm itself** and its optimizer, so the estimates are measured in a state the
algorithm actually visits (every algorithm trains the readout by its exact gradient, so it
is non-zero after one step). With ``warmup_steps = 0`` a zero end-to-end gradient is
reported as ``null`` (undefined), never as a cosine of 0.

Example:
    >>> from fgc.tools.diagnose import diagnose, save
    >>> result = diagnose("specs/mixer-m-1-16.fg", "lg-fg-a", dataset="mnist",
    ...                   data_dir="data", tangents=(1, 4, 16))          # doctest: +SKIP
    >>> result["blocks"][0]["activity"]["cos_target"]                    # doctest: +SKIP
    [0.21, 0.43, 0.68]
    >>> save(result, "diag/")         # diagnose.json and three PNGs     # doctest: +SKIP

``fgc diagnose --aggregate mean,sum,orthogonal`` (:func:`diagnose_aggregations`) compares
aggregations of the K tangents instead (:mod:`fgc.tools.diagnose.aggregate`).

Draws are vmapped in chunks sized to the memory the estimator needs (its noise is
materialised for all ``K`` tangents at once), so memory stays bounded; a ``K`` whose
single draw cannot fit is refused with a hint instead of exhausting the machine.
"""

from __future__ import annotations

from fgc.tools.diagnose.base import (DEFAULT_BATCHES, DEFAULT_DRAWS, DEFAULT_TANGENTS,
                                     DEFAULT_WARMUP, KINDS, PLOTS, RESULT, DiagnoseError)
from fgc.tools.diagnose.aggregate import (diagnose_aggregations, format_aggregations,
                                          save_aggregations)
from fgc.tools.diagnose.cli import add_arguments, run
from fgc.tools.diagnose.measure import diagnose
from fgc.tools.diagnose.report import format_table, save

__all__ = ["DiagnoseError", "add_arguments", "diagnose", "diagnose_aggregations",
           "format_aggregations", "format_table", "run", "save", "save_aggregations"]
