"""
Label and field selectors, parsed and matched the way the Kubernetes API server does.

KMock 0.8 ignores ``labelSelector`` and ``fieldSelector`` and returns every
object of a resource; an operator that finds a Job's Pods by ``job-name=...``
would then see other Jobs' Pods, which no real cluster does. The API server
in this package filters lists and watches with these matchers.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["LabelSelector", "FieldSelector", "SelectorError"]


class SelectorError(ValueError):
    """A selector that real Kubernetes would reject with 400 BadRequest."""


@dataclasses.dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # one of: '=', '!=', 'in', 'notin', 'exists', '!'
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        # Semantics of k8s.io/apimachinery/pkg/labels: '!=' and 'notin' also
        # match objects that lack the key entirely.
        if self.op == "exists":
            return self.key in labels
        if self.op == "!":
            return self.key not in labels
        if self.op in ("=", "in"):
            return self.key in labels and labels[self.key] in self.values
        return self.key not in labels or labels[self.key] not in self.values  # '!=', 'notin'


# A term is one comma-separated requirement; commas inside "(...)" do not split.
_TERM_SPLIT = re.compile(r",(?![^()]*\))")
_SET_TERM = re.compile(r"^\s*([^\s!=()]+)\s+(in|notin)\s+\(([^()]*)\)\s*$")
_EQ_TERM = re.compile(r"^\s*([^\s!=()]+)\s*(==|=|!=)\s*([^\s!=(),]*)\s*$")
_EXISTS_TERM = re.compile(r"^\s*(!?)\s*([^\s!=(),]+)\s*$")


@dataclasses.dataclass(frozen=True)
class LabelSelector:
    """A parsed ``labelSelector``: all requirements must hold (comma means AND)."""

    requirements: tuple[_Requirement, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        """Parse equality-based (``a=b``, ``a!=b``) and set-based (``a in (x,y)``, ``a``, ``!a``) terms."""
        if not text or not text.strip():
            return cls()
        requirements: list[_Requirement] = []
        for term in _TERM_SPLIT.split(text):
            if m := _SET_TERM.match(term):
                values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
                requirements.append(_Requirement(m.group(1), m.group(2), values))
            elif m := _EQ_TERM.match(term):
                op = "!=" if m.group(2) == "!=" else "="
                requirements.append(_Requirement(m.group(1), op, frozenset([m.group(3)])))
            elif m := _EXISTS_TERM.match(term):
                requirements.append(_Requirement(m.group(2), "!" if m.group(1) else "exists"))
            else:
                raise SelectorError(f"unable to parse requirement: {term!r}")
        return cls(tuple(requirements))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(req.matches(labels) for req in self.requirements)


@dataclasses.dataclass(frozen=True)
class FieldSelector:
    """
    A parsed ``fieldSelector``: ``path=value``, ``path==value``, ``path!=value``, comma means AND.

    Real Kubernetes accepts only a few fields per resource (``metadata.name``
    and ``metadata.namespace`` everywhere, ``status.phase`` for Pods, ...);
    here any dotted path is accepted, which is a superset of that.
    """

    terms: tuple[tuple[str, bool, str], ...] = ()  # (path, equal?, value)

    @classmethod
    def parse(cls, text: str | None) -> FieldSelector:
        if not text or not text.strip():
            return cls()
        terms: list[tuple[str, bool, str]] = []
        for term in text.split(","):
            m = _EQ_TERM.match(term)
            if not m:
                raise SelectorError(f"invalid field selector: {term!r}")
            terms.append((m.group(1), m.group(2) != "!=", m.group(3)))
        return cls(tuple(terms))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        for path, equal, value in self.terms:
            current: Any = obj
            for part in path.split("."):
                current = current.get(part) if isinstance(current, Mapping) else None
            actual = "" if current is None else str(current)
            if (actual == value) != equal:
                return False
        return True
