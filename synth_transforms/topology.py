"""TopologyGraph: which organs may overlap, touch or contain each other.

Three relations between an organ pair:

- ``disjoint``: the two never share a voxel;
- ``adjacent``: they touch in real anatomy; when a new organ overlaps an adjacent one already placed, the overlap
  (at most a set fraction of the new organ) is carved out of the new organ, so the two share a boundary;
- ``inside``: the child lies within the parent (directional); the child is drawn over the parent.

Relations are derived from a bank (measured surface contact in the real subjects), can be overridden, and are
saved to / loaded from JSON (validated on load).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from .bank import ShapeBank
from .io import read_json, write_json_atomic

__all__ = [
    "TopologyGraph",
    "RELATIONS",
    "DISJOINT",
    "ADJACENT",
    "INSIDE",
    "CONTAINS",
    "RELATION_CODES",
    "CODE_RELATIONS",
]

DISJOINT, ADJACENT, INSIDE = "disjoint", "adjacent", "inside"
RELATIONS = (DISJOINT, ADJACENT, INSIDE)
#: ``inside`` seen from the parent: what :meth:`TopologyGraph.relation` answers for (parent, child). Never stored.
CONTAINS = "contains"

# Codes of the lookup table used in the placement hot path: CODE[new, existing].
CODE_FREE, CODE_DISJOINT, CODE_CARVE, CODE_OVERWRITE, CODE_KEEP = 0, 1, 2, 3, 4
#: Code of each relation of the new organ (row) to the existing one (column): disjoint rejects, adjacent overlap is
#: carved out of the new organ, a child overwrites its parent, a parent keeps its child's voxels.
RELATION_CODES = {DISJOINT: CODE_DISJOINT, ADJACENT: CODE_CARVE, INSIDE: CODE_OVERWRITE, CONTAINS: CODE_KEEP}
#: Relation name of each code (the inverse of :data:`RELATION_CODES`).
CODE_RELATIONS = {code: relation for relation, code in RELATION_CODES.items()}


class TopologyGraph:
    """Relations between the organs of a bank; any pair not named has the ``default`` relation.

    Args:
        organs: organ names (the bank's, in class order).
        relations: iterable of ``(a, relation, b)``; for ``inside``, ``a`` is the child and ``b`` the parent.
        default: relation of unnamed pairs, ``disjoint`` (strict) or ``adjacent`` (lenient).

    Raises:
        ValueError: an unknown organ or relation, an organ related to itself, conflicting relations for one
            pair, or a cycle of ``inside`` relations.
    """

    def __init__(self, organs: Sequence[str], relations: Iterable[tuple[str, str, str]] = (), default=DISJOINT):
        self.organs = list(organs)
        if not self.organs:
            raise ValueError("topology graph: the organ list is empty")
        if default not in (DISJOINT, ADJACENT):
            raise ValueError(f"topology graph: default relation must be 'disjoint' or 'adjacent', got {default!r}")
        self.default = default
        self._pairs: dict[frozenset, tuple[str, str | None]] = {}  # {a, b} -> (relation, parent for inside)
        for a, rel, b in relations:
            self.set(a, rel, b)

    # ------------------------------------------------------------------ edit / query
    def _check(self, organ: str) -> None:
        if organ not in self.organs:
            raise ValueError(f"topology graph: unknown organ {organ!r}; known organs: {', '.join(self.organs)}")

    def set(self, a: str, relation: str, b: str) -> TopologyGraph:
        """Set the relation of ``a`` and ``b`` (replacing any earlier one); returns ``self``."""
        self._check(a), self._check(b)
        if relation not in RELATIONS:
            raise ValueError(f"topology graph: unknown relation {relation!r} for {a}-{b}; expected one of {RELATIONS}")
        if a == b:
            raise ValueError(f"topology graph: organ {a!r} cannot be related to itself")
        pair = frozenset((a, b))
        previous = self._pairs.get(pair)
        self._pairs[pair] = (relation, b if relation == INSIDE else None)
        if relation == INSIDE:
            try:
                self._check_no_cycle(a)
            except ValueError:  # keep the graph as it was: a kept cycle would hang placement_order
                if previous is None:
                    del self._pairs[pair]
                else:
                    self._pairs[pair] = previous
                raise
        return self

    def relation(self, a: str, b: str) -> str:
        """Relation of ``a`` to ``b``: ``disjoint``, ``adjacent``, ``inside`` (a in b) or ``contains`` (b in a)."""
        rel, parent = self._pairs.get(frozenset((a, b)), (self.default, None))
        if rel == INSIDE:
            return INSIDE if parent == b else CONTAINS
        return rel

    def parents(self, organ: str) -> list[str]:
        """Organs that ``organ`` lies inside."""
        return [p for pair, (rel, p) in self._pairs.items() if rel == INSIDE and organ in pair and p != organ]

    def edges(self) -> list[tuple[str, str, str]]:
        """Explicit relations as ``(a, relation, b)``, sorted, with ``a`` the child for ``inside``."""
        out = []
        for pair, (rel, parent) in self._pairs.items():
            a, b = sorted(pair)
            if rel == INSIDE:
                a, b = (b, a) if parent == a else (a, b)
            out.append((a, rel, b))
        return sorted(out)

    def _check_no_cycle(self, start: str) -> None:
        seen, stack = set(), [start]
        while stack:
            node = stack.pop()
            for p in self.parents(node):
                if p == start:
                    raise ValueError(f"topology graph: 'inside' relations form a cycle through {start!r}")
                if p not in seen:
                    seen.add(p)
                    stack.append(p)

    # ------------------------------------------------------------------ hot-path views
    def code_table(self) -> np.ndarray:
        """``(n + 1, n + 1)`` int8 table indexed ``[new class, existing class]`` (class = organ index + 1)."""
        n = len(self.organs)
        table = np.full((n + 1, n + 1), RELATION_CODES[self.default], dtype=np.int8)
        table[:, 0] = CODE_FREE
        for i, a in enumerate(self.organs, start=1):
            for j, b in enumerate(self.organs, start=1):
                if i != j:
                    table[i, j] = RELATION_CODES[self.relation(a, b)]
        table[np.arange(n + 1), np.arange(n + 1)] = CODE_FREE
        return table

    def placement_order(self, volumes: Mapping[str, float], organs: Sequence[str] | None = None) -> list[str]:
        """Organs sorted large to small, with every parent before its children."""
        organs = list(organs) if organs is not None else self.organs
        remaining = sorted(organs, key=lambda o: -volumes.get(o, 0.0))
        order: list[str] = []
        while remaining:
            for o in remaining:
                if all(p in order or p not in organs for p in self.parents(o)):
                    order.append(o)
                    remaining.remove(o)
                    break
        return order

    # ------------------------------------------------------------------ derivation
    @classmethod
    def from_bank(
        cls,
        bank: ShapeBank,
        adjacent_contact: float = 0.005,
        inside_contact: float = 0.5,
        overrides: Iterable[tuple[str, str, str]] = (),
    ) -> TopologyGraph:
        """Derive relations from the contact measured in the bank's subjects.

        ``contact[a, b]`` is the fraction of organ a's outer surface lying in organ b. A pair is ``inside`` (a in b)
        when the median over subjects of ``contact[a, b]`` reaches ``inside_contact``; ``adjacent`` when, in any
        subject, either organ's contact with the other reaches ``adjacent_contact``; otherwise ``disjoint``.
        ``overrides`` are applied last.
        """
        stack = np.stack([bank.contact[s] for s in bank.subjects])  # (subjects, n, n)
        with warnings.catch_warnings():  # organs absent from a subject are NaN rows
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nanmedian(stack, axis=0)
            peak = np.nanmax(stack, axis=0)
        median, peak = np.nan_to_num(median), np.nan_to_num(peak)
        graph = cls(bank.organs)
        n = len(bank.organs)
        for a in range(n):
            for b in range(a + 1, n):
                oa, ob = bank.organs[a], bank.organs[b]
                if median[a, b] >= inside_contact and median[a, b] >= median[b, a]:
                    graph.set(oa, INSIDE, ob)
                elif median[b, a] >= inside_contact:
                    graph.set(ob, INSIDE, oa)
                elif max(peak[a, b], peak[b, a]) >= adjacent_contact:
                    graph.set(oa, ADJACENT, ob)
        for a, rel, b in overrides:
            graph.set(a, rel, b)
        return graph

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        """JSON form: ``{"organs": [...], "default": ..., "relations": [{"a", "relation", "b"}, ...]}``."""
        return {
            "organs": self.organs,
            "default": self.default,
            "relations": [{"a": a, "relation": r, "b": b} for a, r, b in self.edges()],
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the graph as JSON (atomically)."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "topology graph") -> TopologyGraph:
        """Build from :meth:`to_dict`'s form, validating every field."""
        if not isinstance(data, Mapping) or "organs" not in data:
            raise ValueError(f"{source}: expected an object with 'organs' and 'relations'")
        rels = data.get("relations", [])
        if not isinstance(rels, list):
            raise ValueError(f"{source}: 'relations' must be a list")
        triples = []
        for k, r in enumerate(rels):
            if not isinstance(r, Mapping) or set(r) != {"a", "relation", "b"}:
                raise ValueError(f"{source}: relation #{k} must have exactly the keys 'a', 'relation', 'b': {r!r}")
            triples.append((r["a"], r["relation"], r["b"]))
        try:
            return cls(data["organs"], triples, data.get("default", DISJOINT))
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def load(cls, path: str | os.PathLike, organs: Sequence[str] | None = None) -> TopologyGraph:
        """Read a graph from JSON; with ``organs`` given, check the graph covers exactly those organs."""
        graph = cls.from_dict(read_json(path, "topology graph"), source=f"topology graph {path}")
        if organs is not None and list(organs) != graph.organs:
            raise ValueError(
                f"topology graph {path}: its organs {graph.organs} differ from the bank's {list(organs)} "
                "(same names in the same class order expected)"
            )
        return graph

    def __repr__(self) -> str:
        counts = {r: sum(1 for _, rel, _ in self.edges() if rel == r) for r in RELATIONS}
        return f"TopologyGraph({len(self.organs)} organs, default={self.default}, explicit={counts})"

    def describe(self) -> str:
        """Text listing of the explicit relations, one per line."""
        lines = [repr(self)]
        lines += [f"  {a} {rel} {b}" for a, rel, b in self.edges()]
        return "\n".join(lines)
