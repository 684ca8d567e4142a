"""Semantic Versioning 2.0.0: parsing and precedence, for ontology versions.

Guarantees: ``parse`` accepts exactly the semver.org grammar (no leading
``v``, no leading zeros in numeric identifiers) and returns None otherwise;
``Version`` orders by semver precedence (build metadata ignored, a pre-release
below its release, numeric identifiers below alphanumeric ones).

Must never: accept a string the grammar rejects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# The regular expression semver.org recommends.
_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)


@dataclass(frozen=True, slots=True)
class Version:
    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: str = ""

    def _key(self) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
        # A release sorts after all its pre-releases; numeric identifiers sort
        # numerically and before alphanumeric ones.
        pre = tuple(
            (0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease
        )
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def precedes(self, other: Version) -> bool:
        return self._key() < other._key()

    def same_precedence(self, other: Version) -> bool:
        return self._key() == other._key()

    def bump_kind(self, newer: Version) -> Literal["major", "minor", "patch"]:
        """Which component a move from ``self`` to ``newer`` raised."""
        if newer.major != self.major:
            return "major"
        if newer.minor != self.minor:
            return "minor"
        return "patch"

    def __str__(self) -> str:
        pre = "-" + ".".join(self.prerelease) if self.prerelease else ""
        build = "+" + self.build if self.build else ""
        return f"{self.major}.{self.minor}.{self.patch}{pre}{build}"


def parse(text: str) -> Version | None:
    m = _SEMVER.fullmatch(text)
    if m is None:
        return None
    return Version(
        int(m[1]), int(m[2]), int(m[3]),
        tuple(m[4].split(".")) if m[4] else (),
        m[5] or "",
    )
