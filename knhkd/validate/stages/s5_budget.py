"""Stage 5, performance budget: the proposal's cost fits in what is left.

cost = ⌈classes × class_cost⌉ + ⌈properties × property_cost⌉ +
⌈shapes × shape_cost⌉ ticks (1.0, 0.5, 3.0 by default), where classes and
properties are the terms the delta newly declares (declared in the result, not
in the parent) and shapes the SHACL shapes it adds (subjects newly typed
sh:NodeShape or sh:PropertyShape, and new objects of sh:property). The
proposal is affordable iff cost <= the remaining budget: the runtime's
``budget_remaining_ticks``, or ``budget.total_ticks`` when it supplies none.
Weights are applied in decimal, so ⌈10 × 0.7⌉ is 7, not 8.

Must never: mutate the context's graphs, read a clock, or perform I/O.
"""

from __future__ import annotations

import math
from decimal import Decimal

from rdflib.namespace import SH
from rdflib.term import Node

from knhkd.knowledge.rdf import DeltaView
from knhkd.knowledge.vocabulary import (
    CLASS_TYPES,
    PROPERTY_TYPES,
    SHAPE_TYPES,
    declared,
    newly_declared,
)
from knhkd.validate.types import StageOutcome, ValidationContext


def cost(classes: int, properties: int, shapes: int, class_cost: float,
         property_cost: float, shape_cost: float) -> int:
    """The concepts file's formula, each product rounded up."""
    def up(n: int, w: float) -> int:
        return math.ceil(Decimal(n) * Decimal(repr(w)))

    return up(classes, class_cost) + up(properties, property_cost) + up(shapes, shape_cost)


def _was_shape(view: DeltaView, node: Node) -> bool:
    return declared(view, node, SHAPE_TYPES, parent=True) or next(
        view.parent.subjects(SH.property, node), None
    ) is not None


class BudgetStage:
    number = 5
    name = "performance_budget"

    def run(self, ctx: ValidationContext) -> StageOutcome:
        view = ctx.result
        if view is None:
            return StageOutcome.failed(f"delta does not apply: {ctx.delta_error}")
        cfg = ctx.inputs.settings.budget
        classes = newly_declared(view, CLASS_TYPES)
        properties = newly_declared(view, PROPERTY_TYPES)
        shapes = newly_declared(view, SHAPE_TYPES) | {
            o for _s, p, o in view.new
            if p == SH.property and not _was_shape(view, o)
        }
        ticks = cost(len(classes), len(properties), len(shapes), cfg.class_cost,
                     cfg.property_cost, cfg.shape_cost)
        remaining = ctx.inputs.budget_remaining_ticks
        if remaining is None:
            remaining = cfg.total_ticks
        text = (
            f"cost ⌈{len(classes)}×{cfg.class_cost:g}⌉ + ⌈{len(properties)}×"
            f"{cfg.property_cost:g}⌉ + ⌈{len(shapes)}×{cfg.shape_cost:g}⌉ = {ticks} tick(s)"
        )
        if ticks > remaining:
            return StageOutcome.failed(f"{text} exceeds the remaining budget of "
                                       f"{remaining:g} tick(s)")
        return StageOutcome.passed(f"{text} <= remaining {remaining:g}")
