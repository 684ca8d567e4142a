"""Signers of a proposal: ``name[:role][@unit]``.

A signer entry records that a person (``name``) signed in a role for an
organisational unit: ``"alice:cfo@finance"``, ``"bob:auditor@compliance"``,
``"carol"``. Units are free names, not only sectors (doctrines name units such
as ``compliance``). A person signing in two roles appears twice, with the same
name.

Doctrines count ``signatures_as_signers``: the signatures authenticated
principals made of the stored proposal (``model.ProposalSignature``), the
name being the principal (``issuer#subject``) and role and unit the
capacities its token gave it. A proposal's declared ``signers`` are not
counted (a body could name anyone).

Guarantees: ``parse_signer`` accepts exactly ``model.SIGNER_PATTERN`` and
raises ``SignerError`` naming the entry otherwise; ``persons`` counts distinct
names.

Must never: treat an unparseable entry as a signer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from knhkd.governance.files import GovernanceError
from knhkd.model import SIGNER_PATTERN, ProposalSignature

_SIGNER_RE = re.compile(SIGNER_PATTERN)


class SignerError(GovernanceError):
    """A signer entry that is not ``name[:role][@unit]``."""


@dataclass(frozen=True, slots=True, order=True)
class Signer:
    name: str
    role: str | None
    unit: str | None


def parse_signer(text: str) -> Signer:
    if not _SIGNER_RE.fullmatch(text):
        raise SignerError(f"signer {text!r} is not name[:role][@unit]")
    rest, _, unit = text.partition("@")
    name, _, role = rest.partition(":")
    return Signer(name=name, role=role or None, unit=unit or None)


def parse_signers(texts: Iterable[str]) -> list[Signer]:
    """All entries, or ``SignerError`` naming every malformed one."""
    out: list[Signer] = []
    bad: list[str] = []
    for t in texts:
        try:
            out.append(parse_signer(t))
        except SignerError:
            bad.append(repr(t))
    if bad:
        raise SignerError(f"signer(s) not of the form name[:role][@unit]: {', '.join(bad)}")
    return sorted(out)


def signatures_as_signers(signatures: Iterable[ProposalSignature]) -> list[Signer]:
    """One signer per capacity of each signature (``role@unit``, ``@unit``,
    ``role``), or one of no role and unit for a signature of none."""
    out: list[Signer] = []
    for sig in signatures:
        if not sig.capacities:
            out.append(Signer(name=sig.principal, role=None, unit=None))
        for cap in sig.capacities:
            role, _, unit = cap.partition("@")
            out.append(Signer(name=sig.principal, role=role or None, unit=unit or None))
    return sorted(out)


def persons(signers: Iterable[Signer]) -> set[str]:
    return {s.name for s in signers}
