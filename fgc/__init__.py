"""fgc: a declarative graph compiler for local-learning networks trained with forward gradients.

The public API, by stage::

    spec = fgc.parse_file("specs/mixer-m-8-16.fg")     # .fg text → typed syntax tree
    prog = fgc.load("specs/mixer-m-8-16.fg")           # … → checked graph (all diagnostics)
    plan = prog.plan("lg-fg-a")                         # an algorithm applied to it
"""

from fgc import xla_flags  # first: its flags must reach XLA before jax's backend starts

xla_flags.apply()  # before anything starts jax's backend

from fgc.front.config import Algorithm, Estimator, ParamGroup, TrainConfig, presets
from fgc.errors import (CheckpointError, DataError, Diagnostic, FgError, LoweringError, Span,
                        SpecError, TrainingError)
from fgc.graph.ir import EdgeData, Graph, LossInfo, NodeData
from fgc.graph.loss_kinds import LOSS_KINDS, LossKind, register_loss_kind
from fgc.front.parse import parse, parse_file
from fgc.plan.pieces import Piece
from fgc.plan.program import Plan, Program, load, loads
from fgc.plan.guesses import Unit as ProjectionUnit

__all__ = [
    "LOSS_KINDS", "LossKind", "register_loss_kind",
    "Algorithm", "CheckpointError", "DataError", "Diagnostic", "EdgeData", "Estimator",
    "FgError", "Graph", "LossInfo", "LoweringError", "NodeData", "ParamGroup", "Piece", "Plan", "Program",
    "ProjectionUnit",
    "Span", "SpecError", "TrainConfig", "TrainingError", "load", "loads", "parse", "parse_file",
    "presets",
]
