"""The role → permission table (seed §1.1.1 ``rbac_mapping``, plus knhkd's own).

| Role | Permissions |
|---|---|
| observer | READ_OBSERVATIONS, READ_SNAPSHOTS, READ_RECEIPTS, READ_METRICS |
| analyst | the reads, DETECT_PATTERNS |
| proposer | the reads, DETECT_PATTERNS, GENERATE_PROPOSALS |
| validator | the reads, VALIDATE_PROPOSALS, GOVERN |
| operator | the reads, PROMOTE_SNAPSHOTS, EXECUTE_MAPE_K, GOVERN |
| administrator | ALL |
| producer | INGEST |

The seed's ``READ_*`` is the four reads. ``GOVERN`` (guard-relaxation steps,
proposal signatures) goes to validators, who review, and operators, who
request and activate relaxations; quorum counts distinct principals, so one
of either cannot meet it alone. ``producer`` is knhkd's: a sensor gateway
that may only write observations.

Guarantees: a principal's permissions are exactly the union of its roles'
(``ALL`` implies every permission: ``Principal.may``); names not in the table
grant nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from knhkd.config import AuthConfig
from knhkd.model import ANONYMOUS, LOCAL_ISSUER, Permission, Principal, Role

READS: frozenset[Permission] = frozenset(
    {"READ_OBSERVATIONS", "READ_SNAPSHOTS", "READ_RECEIPTS", "READ_METRICS"}
)

ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = {
    "observer": READS,
    "analyst": READS | {"DETECT_PATTERNS"},
    "proposer": READS | {"DETECT_PATTERNS", "GENERATE_PROPOSALS"},
    "validator": READS | {"VALIDATE_PROPOSALS", "GOVERN"},
    "operator": READS | {"PROMOTE_SNAPSHOTS", "EXECUTE_MAPE_K", "GOVERN"},
    "administrator": frozenset({"ALL"}),
    "producer": frozenset({"INGEST"}),
}


def permissions_of(roles: Iterable[Role]) -> frozenset[Permission]:
    out: frozenset[Permission] = frozenset()
    for role in roles:
        out |= ROLE_PERMISSIONS.get(role, frozenset())
    return out


def anonymous(cfg: AuthConfig) -> Principal:
    """The one principal of every caller while authentication is off."""
    return Principal(issuer="", subject=ANONYMOUS, permissions=frozenset(cfg.anonymous_permissions))


def local(name: str) -> Principal:
    """A principal of the admin socket: ``knhkctl#<name>``, holding ``ALL``.

    The socket admits the daemon's uid and root, who hold the signing key
    already; they name who acts (``knhkctl guards approve --approver A``),
    and those names stay apart from every token issuer's (config.py refuses
    an issuer called ``knhkctl``)."""
    return Principal(issuer=LOCAL_ISSUER, subject=name, permissions=frozenset({"ALL"}))
