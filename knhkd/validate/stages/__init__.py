"""The default seven stages, in order (one module each in this package):
1 static, 2 invariants, 3 doctrines, 4 guards, 5 performance_budget,
6 rollback, 7 compatibility.

Must never: hold state between validations (the stages are shared by every
run of the default pipeline; the SHACL memo belongs to the ``Pipeline``).
"""

from __future__ import annotations

from knhkd.validate.stages.s1_static import StaticStage
from knhkd.validate.stages.s2_invariants import InvariantsStage
from knhkd.validate.stages.s3_doctrines import DoctrineStage
from knhkd.validate.stages.s4_guards import GuardStage
from knhkd.validate.stages.s5_budget import BudgetStage
from knhkd.validate.stages.s6_rollback import RollbackStage
from knhkd.validate.stages.s7_compatibility import CompatibilityStage

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
