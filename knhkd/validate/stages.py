"""The default seven stages, in order (one module each in this package):
1 static, 2 invariants, 3 doctrines, 4 guards, 5 performance_budget,
6 rollback, 7 compatibility.

Must never: hold state between validations (the stages are shared by every
run of the default pipeline; the SHACL memo belongs to the ``Pipeline``).
"""

from __future__ import annotations

from knhkd.validate.budget import BudgetStage
from knhkd.validate.compatibility import CompatibilityStage
from knhkd.validate.doctrines import DoctrineStage
from knhkd.validate.guards import GuardStage
from knhkd.validate.invariants import InvariantsStage
from knhkd.validate.rollback import RollbackStage
from knhkd.validate.static import StaticStage

__all__ = [
    "DEFAULT_STAGES",
    "BudgetStage",
    "CompatibilityStage",
    "DoctrineStage",
    "GuardStage",
    "InvariantsStage",
    "RollbackStage",
    "StaticStage",
]

DEFAULT_STAGES = (
    StaticStage(),
    InvariantsStage(),
    DoctrineStage(),
    GuardStage(),
    BudgetStage(),
    RollbackStage(),
    CompatibilityStage(),
)
