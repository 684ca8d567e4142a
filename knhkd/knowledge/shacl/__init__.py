"""SHACL for knhkd: the plain pySHACL call, SHACL Core compiled into Python
checks, and the incremental certifier of a ΔΣ's result.

Modules, bottom to top (``.importlinter`` holds the order; none imports one
above it): ``errors``, ``terms``; ``results``, ``datagraph``; ``paths`` (read,
evaluate, print property paths), ``constraints`` (one implementation of each
constraint component's check); ``plain`` (the one ``pyshacl.validate`` call,
``Shapes``, report reading); ``compiler`` (``CompiledShapes``) and
``incremental`` (``ShaclChecker``), which share the checks and never import
each other.

Guarantees: the names below are the package's public surface; verdicts and
messages are those of plain pySHACL 0.40 (each module says how).

Must never: know about HTTP, actors or the store.
"""

from knhkd.knowledge.shacl.compiler import CompiledShapes
from knhkd.knowledge.shacl.datagraph import DataGraph
from knhkd.knowledge.shacl.errors import ShaclRuntimeError, ShapesError
from knhkd.knowledge.shacl.incremental import ShaclChecker
from knhkd.knowledge.shacl.plain import Shapes, report_results
from knhkd.knowledge.shacl.results import Result, ShaclResult, Validation, Violation
from knhkd.knowledge.shacl.terms import intern_iri, interned, term_text

__all__ = [
    "CompiledShapes",
    "DataGraph",
    "Result",
    "ShaclChecker",
    "ShaclResult",
    "ShaclRuntimeError",
    "Shapes",
    "ShapesError",
    "Validation",
    "Violation",
    "intern_iri",
    "interned",
    "report_results",
    "term_text",
]
