"""The errors of the SHACL package.

Guarantees: ``ShapesError`` means the shapes graph is unusable (what pySHACL
would refuse), ``ShaclRuntimeError`` that the data made a check impossible to
evaluate (where pySHACL raises ``ReportableRuntimeError``), ``Unsupported``
that a shape uses something this package does not mirror and must be left to
pySHACL; the last never leaves the package.

Must never: import anything of the package (every module may raise these).
"""

from __future__ import annotations

from knhkd.knowledge.rdf import KnowledgeError


class ShapesError(KnowledgeError):
    """A shapes graph pySHACL cannot validate with."""


class ShaclRuntimeError(Exception):
    """The data made a check impossible to evaluate (where pySHACL raises
    ``ReportableRuntimeError``, e.g. ``sh:lessThan`` on a blank node)."""


class Unsupported(Exception):
    """A feature this package does not mirror; the shape (or the whole
    shapes graph) is validated by plain pySHACL instead."""
