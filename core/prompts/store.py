"""Templates in SQLite: one row per saved version; a run records the version it used."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from typing import Any

from sqlite_utils import Database

from core.data.db import now
from core.errors import NotFound
from core.prompts.template import PromptTemplate, default_template


def _from_row(row: dict) -> PromptTemplate:
    settings = json.loads(row.get("settings") or "{}")
    return PromptTemplate(
        name=row["name"],
        instruction=row["instruction"],
        output_format=row["output_format"],
        system=settings.get("system", ""),
        n_examples=int(settings.get("n_examples", 0)),
        version=row["version"],
        id=row["id"],
        retrieval=settings.get("retrieval", "tfidf"),
    )


def same_content(a: PromptTemplate, b: PromptTemplate) -> bool:
    """Whether two templates would give the model the same prompts (names and versions aside)."""
    return (a.instruction, a.output_format, a.system, a.n_examples, a.retrieval) == (
        b.instruction, b.output_format, b.system, b.n_examples, b.retrieval
    )


def get_template(
    db: Database, project_id: int, name: str = "default", version: int | None = None
) -> PromptTemplate:
    """A project's template: the latest version unless ``version`` is given.

    The project's ``default`` template is created (and saved as version 1) on first use.

    Raises:
        NotFound: no template (or version) of that name in the project.
    """
    params: list[Any] = [project_id, name]
    sql = "SELECT * FROM templates WHERE project_id = ? AND name = ?"
    if version is not None:
        sql += " AND version = ?"
        params.append(int(version))
    rows = list(db.query(sql + " ORDER BY version DESC LIMIT 1", params))
    if rows:
        return _from_row(rows[0])
    if name == "default" and version is None:
        if not db["projects"].count_where("id = ?", [project_id]):
            raise NotFound(f"No project with id {project_id}.")
        return save_template(db, project_id, default_template())
    names = [t["name"] for t in list_templates(db, project_id)]
    what = f"version {version} of template {name!r}" if version is not None else f"template {name!r}"
    raise NotFound(f"No {what} in this project. Templates: {', '.join(names) or 'none'}.")


def get_template_by_id(db: Database, template_id: int) -> PromptTemplate:
    """The template version stored in row ``template_id`` (what a run records)."""
    rows = list(db["templates"].rows_where("id = ?", [template_id]))
    if not rows:
        raise NotFound(f"No template with id {template_id}.")
    return _from_row(rows[0])


def save_template(db: Database, project_id: int, tpl: PromptTemplate) -> PromptTemplate:
    """Save ``tpl`` as the next version of its name; return it with its version and id.

    Saving content identical to the latest version returns that version instead of adding one.
    When another process saves the same name at the same moment, the save is retried on top of
    that version.
    """
    attempt = 0
    while True:
        try:
            return _save_once(db, project_id, tpl)
        except sqlite3.IntegrityError:
            if not db["projects"].count_where("id = ?", [project_id]):
                raise NotFound(f"No project with id {project_id}.") from None
            attempt += 1
            if attempt >= 3:
                raise


def _save_once(db: Database, project_id: int, tpl: PromptTemplate) -> PromptTemplate:
    """One attempt, in a transaction that takes the write lock before it reads the latest
    version (a deferred one could not upgrade while another process writes: "database is
    locked")."""
    if db.conn.in_transaction:  # the caller's transaction: a savepoint inside it
        with db.atomic():
            return _insert_version(db, project_id, tpl)
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        saved = _insert_version(db, project_id, tpl)
    except BaseException:
        db.conn.rollback()
        raise
    db.conn.commit()
    return saved


def _insert_version(db: Database, project_id: int, tpl: PromptTemplate) -> PromptTemplate:
    """Insert the next version of ``tpl.name`` unless the latest has the same content."""
    rows = list(
        db.query(
            "SELECT * FROM templates WHERE project_id = ? AND name = ? ORDER BY version DESC LIMIT 1",
            [project_id, tpl.name],
        )
    )
    if rows:
        latest = _from_row(rows[0])
        if same_content(latest, tpl):
            return latest
    version = rows[0]["version"] + 1 if rows else 1
    cursor = db.execute(
        "INSERT INTO templates (project_id, name, version, instruction, output_format, settings,"
        " created_at) VALUES (?,?,?,?,?,?,?)",
        [
            project_id,
            tpl.name,
            version,
            tpl.instruction,
            tpl.output_format,
            json.dumps(
                {"system": tpl.system, "n_examples": tpl.n_examples, "retrieval": tpl.retrieval}
            ),
            now(),
        ],
    )
    return replace(tpl, version=version, id=cursor.lastrowid)


def list_templates(db: Database, project_id: int) -> list[dict]:
    """One row per template name: ``name``, ``versions``, ``latest`` (version), ``updated_at``."""
    return [
        dict(r)
        for r in db.query(
            "SELECT name, COUNT(*) AS versions, MAX(version) AS latest, MAX(created_at) AS updated_at"
            " FROM templates WHERE project_id = ? GROUP BY name ORDER BY name",
            [project_id],
        )
    ]


def list_versions(db: Database, project_id: int, name: str) -> list[dict]:
    """Every saved version of a template, newest first, with the runs that used it."""
    return [
        dict(r)
        for r in db.query(
            "SELECT t.id, t.version, t.output_format, t.created_at,"
            " (SELECT COUNT(*) FROM runs r WHERE r.template_id = t.id) AS runs"
            " FROM templates t WHERE t.project_id = ? AND t.name = ? ORDER BY t.version DESC",
            [project_id, name],
        )
    ]


def describe(tpl: PromptTemplate) -> list[str]:
    """The template as lines of text (settings, system message, instruction) for diffs."""
    return [
        f"output format: {tpl.output_format}",
        f"retrieved examples: {tpl.n_examples} ({tpl.retrieval})",
        "system:",
        *(tpl.system.splitlines() or [""]),
        "instruction:",
        *tpl.instruction.splitlines(),
    ]


def diff(old: PromptTemplate, new: PromptTemplate) -> str:
    """A unified diff from ``old`` to ``new`` ("" when they give the same prompts)."""
    import difflib

    if same_content(old, new):
        return ""
    return "\n".join(
        difflib.unified_diff(describe(old), describe(new), old.label, new.label, lineterm="", n=2)
    )
