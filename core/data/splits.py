"""Train/dev/test splits: who may move a sentence, and what a random split moved.

Every sentence records where its split came from (``sentences.split_source``): ``default`` (no
file or option named one, so it landed in train), ``import`` (the file or the import's split
option named it), ``hand`` (moved on the Data page or with :func:`set_split`) or ``random``
(:func:`split_project` or :func:`carve_dev`).

A random split never moves a test sentence out of test, nor a sentence whose split was set by
hand, nor a dev sentence the import placed — unless asked (``reassign``). Training sentences
that nobody moved by hand are what it draws dev (and test) from. Sentences already scored as test
data never leave test, not even when asked.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlite_utils import Database

from core import config
from core.errors import NerlabError, NotFound

DEFAULT_DEV = 0.1
DEFAULT_TEST = 0.2


def locked_test_ids(db: Database, project_id: int) -> set[int]:
    """Sentences that have been scored as test data: they never leave the test split."""
    return {
        r["sentence_id"]
        for r in db.query(
            "SELECT DISTINCT p.sentence_id FROM predictions p JOIN sentences s ON s.id = p.sentence_id"
            " WHERE s.project_id = ? AND p.split = 'test'",
            [project_id],
        )
    }


def split_counts(db: Database, project_id: int) -> dict[str, int]:
    counts = dict.fromkeys(config.SPLITS, 0)
    for r in db.query(
        "SELECT split, COUNT(*) AS n FROM sentences WHERE project_id = ? GROUP BY split", [project_id]
    ):
        counts[r["split"]] = r["n"]
    return counts


@dataclass
class SplitReport:
    """What :func:`split_project` did: the shares it used, what moved where, what it kept."""

    dev: float
    test: float
    counts: dict[str, int]
    moved: dict[str, int] = field(default_factory=dict)  # "train → dev": n
    kept: dict[str, int] = field(default_factory=dict)  # reason: n

    @property
    def n_moved(self) -> int:
        return sum(self.moved.values())

    def summary(self) -> str:
        moved = (f"Moved {self.n_moved} sentence(s): "
                 + ", ".join(f"{k} {v}" for k, v in self.moved.items()) if self.moved
                 else "Moved no sentence")
        kept = ("; kept where they were: " + "; ".join(f"{v} {k}" for k, v in self.kept.items())
                if self.kept else "")
        counts = ", ".join(f"{k}: {v}" for k, v in self.counts.items())
        return f"{moved} (dev share {self.dev:g}, test share {self.test:g}){kept}. Now: {counts}."


def _default_share(rows: list[dict], split: str, movable, default: float) -> float:
    """The default share of a split: 0 when the import or a person already filled it."""
    fixed = any(r["split"] == split and not movable(r) for r in rows)
    return 0.0 if fixed else default


def split_project(
    db: Database,
    project_id: int,
    dev: float | None = None,
    test: float | None = None,
    seed: int = 0,
    reassign: bool = False,
) -> SplitReport:
    """Draw dev and test sentences at random, reproducibly (same seed → same split).

    Each sentence's draw depends only on its content hash and the seed, so adding sentences
    later does not reshuffle the old ones. Without ``reassign`` only training sentences not
    placed by hand, and dev sentences an earlier random split placed, may move; test sentences
    stay in test. A share left as None is 0 for a split that the import or a person filled
    (say ``dev=0.1`` to carve more), else 0.1 for dev and 0.2 for test.
    """
    locked = locked_test_ids(db, project_id)
    rows = [dict(r) for r in db.query(
        "SELECT id, hash, split, split_source FROM sentences WHERE project_id = ?", [project_id])]

    def movable(r: dict) -> bool:
        if r["id"] in locked:
            return False
        if reassign:
            return True
        if r["split"] == "train":
            return r["split_source"] != "hand"
        return r["split"] == "dev" and r["split_source"] in ("random", "default")

    dev = _default_share(rows, "dev", movable, DEFAULT_DEV) if dev is None else dev
    test = _default_share(rows, "test", movable, DEFAULT_TEST) if test is None else test
    if not (0 <= dev < 1 and 0 <= test < 1 and dev + test < 1):
        raise NerlabError(f"Split ratios dev={dev} and test={test} must be in [0, 1) and sum below 1.")
    moved: Counter[str] = Counter()
    kept: Counter[str] = Counter()
    updates = []
    for r in rows:
        if not movable(r):
            if r["id"] in locked:
                kept["test sentence(s) already scored as test data (they never leave test)"] += 1
            elif r["split"] == "test":
                kept["test sentence(s) (test never moves without --reassign)"] += 1
            else:
                kept[f"{r['split']} sentence(s) placed by {r['split_source']} "
                     "(they move only with --reassign)"] += 1
            continue
        u = random.Random(f"{seed}:{r['hash']}").random()
        target = "test" if u < test else "dev" if u < test + dev else "train"
        if target != r["split"]:
            moved[f"{r['split']} → {target}"] += 1
            updates.append((target, r["id"]))
        elif reassign and r["split_source"] != "random":
            updates.append((target, r["id"]))
    with db.atomic():
        db.conn.executemany(
            "UPDATE sentences SET split = ?, split_source = 'random' WHERE id = ?", updates)
    return SplitReport(dev=dev, test=test, counts=split_counts(db, project_id),
                       moved=dict(sorted(moved.items())), kept=dict(kept))


def assign_splits(
    db: Database, project_id: int, dev: float | None = 0.1, test: float | None = 0.2,
    seed: int = 0, reassign: bool = False,
) -> dict[str, int]:
    """:func:`split_project`, returning only the count per split."""
    return split_project(db, project_id, dev=dev, test=test, seed=seed, reassign=reassign).counts


def carve_dev(db: Database, project_id: int, share: float = 0.1, seed: int = 0) -> int:
    """Move a reproducible ``share`` of the labelled training sentences to dev (at least one);
    test is never touched, nor a sentence moved to train by hand. Returns how many moved. What
    a project imported as train + test files needs before it can be trained."""
    if not 0 < share < 1:
        raise NerlabError(f"The dev share must be between 0 and 1, got {share}.")
    rows = list(db.query("SELECT id, hash FROM sentences WHERE project_id = ? AND split = 'train'"
                         " AND status = 'labelled' AND split_source != 'hand'", [project_id]))
    if len(rows) < 2:
        raise NerlabError("There are too few labelled training sentences to set some aside as dev.")
    rows.sort(key=lambda r: random.Random(f"{seed}:{r['hash']}").random())
    chosen = [r["id"] for r in rows[: max(1, round(share * len(rows)))]]
    with db.atomic():
        db.conn.executemany("UPDATE sentences SET split = 'dev', split_source = 'random' WHERE id = ?",
                            [(i,) for i in chosen])
    return len(chosen)


def set_split(db: Database, sentence_ids: Sequence[int], split: str) -> int:
    """Move sentences to a split by hand; refuses to move scored test sentences out of test.

    A split set by hand stays: a later random split leaves these sentences where they are."""
    if split not in config.SPLITS:
        raise NerlabError(f"Split {split!r} is not one of {', '.join(config.SPLITS)}.")
    if not sentence_ids:
        return 0
    row = db.execute("SELECT project_id FROM sentences WHERE id = ?", [sentence_ids[0]]).fetchone()
    if row is None:
        raise NotFound(f"No sentence with id {sentence_ids[0]}.")
    if split != "test":
        stuck = locked_test_ids(db, row[0]) & set(sentence_ids)
        if stuck:
            raise NerlabError(
                f"{len(stuck)} of these sentences have been scored as test data and stay in test "
                "(moving them would leak test data into training)."
            )
    with db.atomic():
        db.conn.executemany(
            "UPDATE sentences SET split = ?, split_source = 'hand' WHERE id = ?",
            [(split, i) for i in sentence_ids],
        )
    return len(sentence_ids)
