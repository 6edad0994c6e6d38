"""One browser tab's labelling: the sentence on screen, its undo stack, and the actions the widget sends, saved at once with optimistic concurrency.

What a tab shows and saves is its annotator's own annotation of the sentence (see
:func:`core.data.annotations.working`): two annotators never overwrite each other, and two
tabs of one annotator are kept apart by the version of that annotation."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlite_utils import Database

from core.data import annotations, projects, suggestions
from core.data.labeling import QueueFilter, neighbour, next_in_queue, number_of
from core.data.spans import Span, tokenize
from core.errors import Conflict, NerlabError, NotFound

ACTIONS = ("edit", "accept", "next", "prev", "undo", "reopen")
#: Who saves when the tab has no name (a single user who cleared the name field).
ANONYMOUS = "anonymous"


#: Undo entries a tab keeps (older changes can still be fixed by hand).
UNDO_DEPTH = 200


@dataclass
class UndoEntry:
    """The state of a sentence before one change: restoring it undoes the change."""

    sentence_id: int
    spans: list[Span]
    status: str
    #: The sentence's suggestion's taken/reviewed marks before the change (see
    #: :func:`core.data.suggestions.state`).
    suggestion: tuple | None = None
    #: Whose annotation changed, and whether it existed before (undoing a first save removes it).
    annotator: str = ""
    existed: bool = True


@dataclass
class Notice:
    """A message for the user after an action (``level``: success, info, warning, error)."""

    level: str
    text: str
    #: On a conflict: the spans this tab tried to save (shown so the user can redo them).
    unsaved: list[Span] | None = None


@dataclass
class LabelSession:
    """One tab's labelling state (kept in Streamlit's session state, never in a module global).

    Attributes:
        current: id of the sentence on screen.
        versions: sentence id → the version this tab last saw or wrote.
        own: sentence id → versions this tab wrote itself (its own quick successive edits
            never conflict with each other; anybody else's do).
        undo: changes this tab can undo, most recent last.
        ack: sequence number of the last widget action handled (echoed to the widget); an
            action with a number not above it was handled already and is ignored.
        notice: what to tell the user on the next render.
        acted: set by the page's callbacks: this script run follows the user's own action in
            this tab, so a ``?sentence=`` in the URL is this tab's own, possibly stale, one
            (the browser may send the URL of an earlier run), not a link to follow.
    """

    current: int | None = None
    versions: dict[int, int] = field(default_factory=dict)
    own: dict[int, set[int]] = field(default_factory=dict)
    undo: list[UndoEntry] = field(default_factory=list)
    ack: int = 0
    notice: Notice | None = None
    filter_key: tuple | None = None
    link_handled: str | None = None
    acted: bool = False
    #: Raised when the queue's filters change, so that the widget takes the keys back.
    focus: int = 0
    #: Sentences this tab moved away from (accept, next, jump): "previous" walks back along it.
    trail: list[int] = field(default_factory=list)
    #: Where the suggestions this tab shows come from (``auto``, ``run:ID``, ``off``), set by
    #: the page on every run: an accept from a button takes the suggestions shown.
    suggest_from: str = "off"

    def move_to(self, sentence_id: int | None) -> None:
        """Open another sentence, remembering the one left for "previous"."""
        if sentence_id is not None and self.current is not None and sentence_id != self.current:
            self.trail.append(self.current)
            del self.trail[:-UNDO_DEPTH]
        self.current = sentence_id

    def seen(self, sentence: Mapping[str, Any]) -> None:
        """Record the version of a sentence as it is shown."""
        self.versions[sentence["id"]] = sentence["version"]

    def expected_version(self, sentence_id: int, base: int | None) -> int | None:
        """The version a save from this tab must find in the database.

        ``base`` is the version the widget was showing when the user acted. When the versions
        after it were all written by this tab (quick edits overtaking the page refresh), the
        tab's latest version is expected; when somebody else wrote one of them, ``base`` is
        expected, so the save fails with :class:`Conflict` instead of overwriting their work.
        """
        known = self.versions.get(sentence_id)
        if base is None:
            return known
        if known is None:
            return base
        own = self.own.get(sentence_id, set())
        if base <= known and all(v in own for v in range(base + 1, known + 1)):
            return known
        return base

    def wrote(self, sentence_id: int, version: int) -> None:
        self.versions[sentence_id] = version
        self.own.setdefault(sentence_id, set()).add(version)


@dataclass(frozen=True)
class Action:
    """One user action sent by the labelling widget (validated; the browser is not trusted)."""

    type: str
    sentence_id: int
    spans: tuple[Span, ...] | None = None
    version: int | None = None
    #: The widget's increasing sequence number; 0 for the page's buttons (never deduplicated).
    seq: int = 0
    #: The id of the untaken suggestion the widget showed with the spans (None: none shown).
    suggestion: int | None = None


def parse_action(raw: Any) -> Action:
    """Validate the JSON the widget sends: ``{type, sentence_id, version, spans, seq}``."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise NerlabError("The labelling widget sent something that is not JSON.") from None
    if not isinstance(raw, Mapping):
        raise NerlabError("The labelling widget sent an action that is not an object.")
    kind = raw.get("type")
    if kind not in ACTIONS:
        raise NerlabError(f"Unknown labelling action {kind!r}.")
    sid = raw.get("sentence_id")
    if not isinstance(sid, int) or isinstance(sid, bool):
        raise NerlabError("The labelling action names no sentence.")
    version = raw.get("version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        raise NerlabError("The labelling action has a bad version number.")
    if version is None and kind in ("edit", "accept", "reopen"):
        raise NerlabError("The labelling action does not say which version of the sentence it "
                          "changes; reload the page.")
    spans = None
    if raw.get("spans") is not None:
        if not isinstance(raw["spans"], list):
            raise NerlabError("The labelling action's spans must be a list.")
        items = []
        for sp in raw["spans"]:
            try:
                items.append(Span(int(sp["start"]), int(sp["end"]), str(sp["label"])))
            except (KeyError, TypeError, ValueError):
                raise NerlabError(f"Bad span from the labelling widget: {sp!r}.") from None
        spans = tuple(items)
    seq = raw.get("seq") or 0
    shown = raw.get("suggestion")
    if shown is not None and (not isinstance(shown, int) or isinstance(shown, bool)):
        raise NerlabError("The labelling action names a bad suggestion.")
    return Action(kind, sid, spans, version, int(seq) if isinstance(seq, (int, float)) else 0,
                  shown)




def working(db: Database, sentence: Mapping[str, Any], annotator: str) -> dict:
    """What ``annotator`` sees of a sentence and saves on: spans, status, version (see
    :func:`core.data.annotations.working`)."""
    return annotations.working(db, sentence, annotator or ANONYMOUS)


def _describe_conflict(db: Database, sentence_id: int, annotator: str) -> str:
    current = projects.get_sentence(db, sentence_id)
    work = working(db, current, annotator)
    entities = ", ".join(f"{s.label} “{current['text'][s.start:s.end]}”"
                         for s in work["spans"]) or "no entities"
    return (
        f"Not saved: sentence {number_of(db, current)} was changed by "
        f"{annotator or ANONYMOUS} at {work['updated_at']} (in another tab) after this tab "
        f"loaded it. That version is shown now ({entities}; {work['status']}). "
        "Redo your change on it if it is still needed."
    )


def _save(
    db: Database,
    session: LabelSession,
    sentence: Mapping[str, Any],
    spans: Sequence[Span],
    status: str,
    annotator: str,
    base: int | None,
    shown: Mapping[str, Any] | None = None,
) -> bool:
    """Save with optimistic concurrency; on a conflict set the notice and return False.

    ``shown``: the untaken suggestion the user saw with these spans; it is taken (and, when the
    sentence is accepted, reviewed) with the save."""
    sid = sentence["id"]
    who = annotator or ANONYMOUS
    work = working(db, sentence, who)
    before = UndoEntry(sid, work["spans"], work["status"], suggestions.state(db, sid), who,
                       work["own"])
    expected = session.expected_version(sid, base)
    if expected is None:  # every save is checked against the version this tab has seen
        session.notice = Notice("error", f"Not saved: this tab has not seen sentence "
                                f"{number_of(db, sentence)} yet; reload the page.", unsaved=list(spans))
        return False
    try:
        version = projects.save_annotation(db, sid, list(spans), who,
                                           expected_version=expected, status=status)
    except Conflict:
        session.notice = Notice("error", _describe_conflict(db, sid, who), unsaved=list(spans))
        session.seen({"id": sid, "version": working(db, sentence, who)["version"]})
        return False
    session.wrote(sid, version)
    if shown is not None:
        suggestions.take(db, shown["id"], who)
    if status == "labelled":
        suggestions.mark_reviewed(db, sid)
    changed = suggestions.state(db, sid) != before.suggestion
    if before.spans != sorted(spans) or before.status != status or changed:
        session.undo.append(before)
        del session.undo[:-UNDO_DEPTH]
    return True


def apply_action(
    db: Database,
    project_id: int,
    session: LabelSession,
    action: Action,
    annotator: str,
    flt: QueueFilter,
) -> None:
    """Carry out one widget action: save at once, move through the queue, or undo.

    Sets ``session.notice`` to tell the user what happened (conflicts and invalid spans
    included) and ``session.current`` to the sentence to show next. Never raises for problems a
    user can cause; they become error notices.
    """
    if action.seq and action.seq <= session.ack:
        # Already carried out: when a new rerun interrupts the script run that handled a widget
        # action, Streamlit keeps the action's trigger and calls the callback again.
        return
    session.ack = max(session.ack, action.seq)
    session.notice = None
    try:
        if action.type == "undo":
            _undo(db, project_id, session, annotator)
            return
        sentence = projects.get_sentence(db, action.sentence_id)
        if sentence["project_id"] != project_id:
            raise NerlabError("That sentence belongs to another project; reload the page.")
        if action.type in ("edit", "accept", "reopen"):
            work = working(db, sentence, annotator)
            view = {**sentence, "status": work["status"]}  # as this annotator sees it
            shown = suggestions.pending(db, view, session.suggest_from)
            if action.spans is not None:
                spans = list(action.spans)
                if shown is not None and action.suggestion != shown["id"]:
                    shown = None  # the widget showed no suggestion, or one since replaced
            else:  # a button: what the page shows, suggestions included
                spans = suggestions.display_spans(db, view, session.suggest_from, work["spans"])
            status = {"edit": work["status"], "accept": "labelled", "reopen": "unlabelled"}[
                action.type
            ]
            unchanged = (sorted(spans) == work["spans"]
                         and status == work["status"] and shown is None)
            if action.type == "edit" and unchanged:
                session.current = sentence["id"]  # nothing to save (e.g. a span dragged back)
                return
            if not _save(db, session, sentence, spans, status, annotator, action.version, shown):
                session.current = sentence["id"]
                return
            if action.type == "accept":
                nxt = next_in_queue(db, project_id, flt, sentence["position"], sentence["id"])
                session.current = sentence["id"]
                session.move_to(nxt if nxt is not None else sentence["id"])
                if nxt is None or nxt == sentence["id"]:
                    session.notice = Notice(
                        "success", "Saved. Nothing left in this queue: every sentence in it is done."
                    )
            else:
                session.current = sentence["id"]
        elif action.type == "prev" and _back(db, project_id, session, sentence["id"]):
            return
        elif action.type in ("next", "prev"):
            step = 1 if action.type == "next" else -1
            nxt = neighbour(db, project_id, flt, sentence["position"], step, sentence["id"])
            if nxt is None:
                session.notice = Notice(
                    "info",
                    "This is the last sentence in the queue."
                    if step > 0
                    else "This is the first sentence in the queue.",
                )
                session.current = sentence["id"]
            elif step > 0:
                session.current = sentence["id"]
                session.move_to(nxt)
            else:  # walking back does not grow the trail (no ping-pong between two sentences)
                session.current = nxt
    except NerlabError as exc:
        session.notice = Notice("error", str(exc))


def _back(db: Database, project_id: int, session: LabelSession, here: int) -> bool:
    """Go back to the sentence this tab came from, if there is one; True when it did."""
    while session.trail:
        previous = session.trail.pop()
        if previous == here:
            continue
        row = db.execute("SELECT project_id FROM sentences WHERE id = ?", [previous]).fetchone()
        if row and row[0] == project_id:
            session.current = previous
            return True
    return False


def _undo(db: Database, project_id: int, session: LabelSession, annotator: str) -> None:
    if not session.undo:
        session.notice = Notice("info", "Nothing to undo in this tab.")
        return
    entry = session.undo.pop()
    try:
        sentence = projects.get_sentence(db, entry.sentence_id)
    except NotFound:
        session.notice = Notice("warning", "The sentence of the last change no longer exists.")
        return
    session.current = sentence["id"]
    sid = sentence["id"]
    who = entry.annotator or annotator or ANONYMOUS
    try:
        if entry.existed:
            version = projects.save_annotation(
                db, sid, entry.spans, who,
                expected_version=session.expected_version(sid, None), status=entry.status,
            )
        else:  # the change undone was this annotator's first save: the annotation goes
            annotations.remove(db, sid, who, session.expected_version(sid, None))
            version = 0
    except Conflict:
        session.notice = Notice("error", _describe_conflict(db, sid, who))
        session.seen({"id": sid, "version": working(db, sentence, who)["version"]})
        return
    session.wrote(sid, version)
    suggestions.restore(db, entry.suggestion)
    session.notice = Notice("info", f"Undone: sentence {number_of(db, sentence)} is back as it was.")


def label_legend(labels: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Entity types as the widget shows them: name, colour, hotkey, one-line guideline."""
    return [
        {
            "name": row["name"],
            "color": row["color"],
            "hotkey": row["hotkey"] or "",
            "description": (row["description"] or "").split("\n", 1)[0],
        }
        for row in labels
    ]


def widget_data(
    db: Database,
    sentence: Mapping[str, Any],
    labels: Sequence[Mapping[str, Any]],
    *,
    queue_index: int | None,
    queue_total: int,
    ack: int = 0,
    focus: int = 0,
    suggest_from: str | None = None,
    work: Mapping[str, Any] | None = None,
) -> dict:
    """Everything the widget needs to draw one sentence (JSON-serialisable). A new ``focus``
    number makes the widget take the keyboard back from a text box (after a search).

    ``spans`` carry ``suggested`` (a model's suggestion not yet accepted: drawn dashed) and
    ``confidence``; ``suggestion`` says which model suggested them (see
    :func:`core.data.suggestions.display`), for the suggestions of ``suggest_from``.

    ``work``: what the annotator sees (:func:`working`; default: what an unnamed one sees)."""
    tokens = json.loads(sentence["tokens"]) if sentence["tokens"] else tokenize(sentence["text"])
    if work is None:
        work = working(db, sentence, ANONYMOUS)
    spans, suggestion = suggestions.display(db, {**sentence, "status": work["status"]},
                                            suggest_from, gold=work["spans"])
    return {
        "sentence_id": sentence["id"],
        "version": work["version"],
        "status": work["status"],
        "text": sentence["text"],
        "tokens": [list(t) for t in tokens],
        "spans": spans,
        "suggestion": suggestion,
        "labels": label_legend(labels),
        "number": number_of(db, sentence),
        "split": sentence["split"],
        "annotator": work["annotator"] or "",
        "updated_at": work["updated_at"],
        "queue_index": queue_index,
        "queue_total": queue_total,
        "ack": ack,
        "focus": focus,
    }
