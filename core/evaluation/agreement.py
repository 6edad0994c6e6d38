"""Inter-annotator agreement: pairwise span-level F1 (exact and overlap), per entity type, and
each annotator against the adjudicated gold.

Span-level F1 between two annotators is symmetric: ``2·matched / (spans of A + spans of B)``
over the sentences both labelled (it equals the F1 of either one scored against the other).
*Exact*: a match is the same start, end and type. *Overlap*: the same type and at least one
shared character, each span matched at most once (larger overlaps first). Per entity type, only
the spans of that type count. Against the gold, an annotator's spans are the prediction and the
adjudicated gold the reference (precision, recall, F1), over the sentences whose gold a
reviewer set or two or more annotators agreed on (a sentence whose gold is one annotator's own
label would score that annotator 1.0 and say nothing).

When neither side has a span (both said "no entities"), F1 is undefined: ``None``, shown as –.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations

from sqlite_utils import Database

from core.data import annotations, projects, review
from core.data.spans import Span

MODES = ("exact", "overlap")
#: Gold sources that count as adjudicated (see :mod:`core.data.annotations`).
ADJUDICATED = ("review", "agreed")


@dataclass
class Tally:
    """Matched spans and the spans each side marked."""

    matched: int = 0
    a: int = 0
    b: int = 0

    def add(self, matched: int, a: int, b: int) -> None:
        self.matched += matched
        self.a += a
        self.b += b

    @property
    def f1(self) -> float | None:
        return 2 * self.matched / (self.a + self.b) if self.a + self.b else None

    @property
    def precision(self) -> float | None:
        """With ``a`` as the prediction and ``b`` the reference."""
        return self.matched / self.a if self.a else None

    @property
    def recall(self) -> float | None:
        return self.matched / self.b if self.b else None

    def to_dict(self) -> dict:
        return {"f1": _round(self.f1), "matched": self.matched, "spans_a": self.a,
                "spans_b": self.b}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def exact_matches(a: Sequence[Span], b: Sequence[Span]) -> int:
    """Spans with the same start, end and type in both."""
    return len(set(a) & set(b))


def overlap_matches(a: Sequence[Span], b: Sequence[Span]) -> int:
    """One-to-one matches of same-type spans sharing at least one character, larger overlaps
    first."""
    pairs = sorted(
        ((min(x.end, y.end) - max(x.start, y.start), i, j)
         for i, x in enumerate(a) for j, y in enumerate(b)
         if x.label == y.label and x.start < y.end and y.start < x.end),
        key=lambda t: (-t[0], t[1], t[2]))
    used_a: set[int] = set()
    used_b: set[int] = set()
    for _size, i, j in pairs:
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
    return len(used_a)


_MATCH = {"exact": exact_matches, "overlap": overlap_matches}


@dataclass
class Comparison:
    """Two sets of annotations compared over some sentences: overall and per type."""

    sentences: int = 0
    overall: dict[str, Tally] = field(default_factory=lambda: {m: Tally() for m in MODES})
    per_type: dict[str, dict[str, Tally]] = field(default_factory=dict)

    def add(self, a: Sequence[Span], b: Sequence[Span]) -> None:
        self.sentences += 1
        for mode in MODES:
            self.overall[mode].add(_MATCH[mode](a, b), len(a), len(b))
        for label in sorted({s.label for s in (*a, *b)}):
            xa = [s for s in a if s.label == label]
            xb = [s for s in b if s.label == label]
            tallies = self.per_type.setdefault(label, {m: Tally() for m in MODES})
            for mode in MODES:
                tallies[mode].add(_MATCH[mode](xa, xb), len(xa), len(xb))

    def merge(self, other: Comparison) -> None:
        self.sentences += other.sentences
        for mode in MODES:
            t = other.overall[mode]
            self.overall[mode].add(t.matched, t.a, t.b)
        for label, tallies in other.per_type.items():
            mine = self.per_type.setdefault(label, {m: Tally() for m in MODES})
            for mode in MODES:
                mine[mode].add(tallies[mode].matched, tallies[mode].a, tallies[mode].b)

    def to_dict(self) -> dict:
        return {
            "sentences": self.sentences,
            **{mode: self.overall[mode].to_dict() for mode in MODES},
            "per_type": {label: {mode: t[mode].to_dict() for mode in MODES}
                         for label, t in sorted(self.per_type.items())},
        }


def pairwise(sets: Mapping[int, Mapping[str, Sequence[Span]]]) -> dict[tuple[str, str], Comparison]:
    """Every pair of annotators over the sentences both labelled (pairs sharing none left out)."""
    out: dict[tuple[str, str], Comparison] = {}
    for by in sets.values():
        for x, y in combinations(sorted(by), 2):
            out.setdefault((x, y), Comparison()).add(by[x], by[y])
    return dict(sorted(out.items()))


def against_gold(sets: Mapping[int, Mapping[str, Sequence[Span]]],
                 gold: Mapping[int, Sequence[Span]]) -> dict[str, Comparison]:
    """Each annotator (as ``a``) against the gold (as ``b``) over the gold's sentences they
    labelled."""
    out: dict[str, Comparison] = {}
    for sid, reference in gold.items():
        for who, spans in sets.get(sid, {}).items():
            out.setdefault(who, Comparison()).add(spans, reference)
    return dict(sorted(out.items()))


def adjudicated_gold(db: Database, project_id: int) -> dict[int, list[Span]]:
    """The gold of sentences a reviewer adjudicated or annotators agreed on."""
    ids = {r[0] for r in db.execute(
        f"SELECT id FROM sentences WHERE project_id = ? AND status = 'labelled' AND gold_source"
        f" IN ({','.join('?' * len(ADJUDICATED))})", [project_id, *ADJUDICATED])}
    return {e.id: list(e.spans) for e in projects.examples(db, project_id) if e.id in ids}


def report(db: Database, project_id: int) -> dict:
    """Everything ``nerlab agreement`` and the home page show, JSON-serialisable."""
    sets = annotations.labelled_sets(db, project_id)
    pairs = pairwise(sets)
    total = Comparison()
    for comparison in pairs.values():
        total.merge(comparison)
    gold = adjudicated_gold(db, project_id)
    vs_gold = against_gold(sets, gold)
    return {
        "project": projects.get_project(db, project_id)["name"],
        "share": annotations.share(db, project_id),
        "annotators": annotations.annotators(db, project_id),
        **review.summary(db, project_id),
        "pairs": [{"a": a, "b": b, **c.to_dict()} for (a, b), c in pairs.items()],
        "all_pairs": total.to_dict(),
        "gold_sentences": len(gold),
        "vs_gold": [
            {"annotator": who, "sentences": c.sentences,
             **{mode: {"precision": _round(c.overall[mode].precision),
                       "recall": _round(c.overall[mode].recall),
                       "f1": _round(c.overall[mode].f1)} for mode in MODES}}
            for who, c in vs_gold.items()
        ],
    }


def fmt(value: float | None) -> str:
    """``0.812`` or ``–`` (undefined)."""
    return "–" if value is None else f"{value:.3f}"


def lines(rep: Mapping) -> list[str]:
    """The report as text, for the command line."""
    who = ", ".join(a["annotator"] for a in rep["annotators"]) or "nobody yet"
    out = [f"{rep['project']}: {annotations.describe_share(rep['share'])}; annotators: {who}.",
           f"{rep['multi']} sentence(s) labelled by two or more annotators, {rep['disputed']} "
           f"to review, {rep['reviewed']} reviewed."]
    if not rep["pairs"]:
        out.append("No two annotators have labelled the same sentence yet: nothing to compare.")
        return out
    out += ["", f"{'Pairwise span F1':32} {'exact':>7} {'overlap':>8} {'sentences':>10}"]
    for p in [*rep["pairs"], {"a": "all pairs", "b": "", **rep["all_pairs"]}]:
        name = f"{p['a']} – {p['b']}" if p["b"] else f"{p['a']} (micro)"
        out.append(f"  {name[:30]:30} {fmt(p['exact']['f1']):>7} {fmt(p['overlap']['f1']):>8} "
                   f"{p['sentences']:>10}")
    out += ["", f"{'Per entity type (all pairs)':32} {'exact':>7} {'overlap':>8} {'spans':>10}"]
    for label, t in rep["all_pairs"]["per_type"].items():
        spans = t["exact"]["spans_a"] + t["exact"]["spans_b"]
        out.append(f"  {label[:30]:30} {fmt(t['exact']['f1']):>7} {fmt(t['overlap']['f1']):>8} "
                   f"{spans:>10}")
    out += ["", f"Against the adjudicated gold ({rep['gold_sentences']} sentence(s) reviewed or "
            "agreed)"]
    if not rep["vs_gold"]:
        out.append("  none yet: review disagreements, or let two annotators label a sentence.")
    else:
        out.append(f"  {'annotator':20} {'P':>6} {'R':>6} {'F1':>6} {'F1 overlap':>11} "
                   f"{'sentences':>10}")
        for g in rep["vs_gold"]:
            e = g["exact"]
            out.append(f"  {g['annotator'][:20]:20} {fmt(e['precision']):>6} "
                       f"{fmt(e['recall']):>6} {fmt(e['f1']):>6} {fmt(g['overlap']['f1']):>11} "
                       f"{g['sentences']:>10}")
    return out
