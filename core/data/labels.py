"""A project's entity types: names, colours, hotkeys and guidelines."""

from __future__ import annotations

import re
import unicodedata

from sqlite_utils import Database

from core import config
from core.errors import NerlabError

_HOTKEYS = "123456789" + "qwertyuiopasdfghjklzxcvbnm"


def list_labels(db: Database, project_id: int) -> list[dict]:
    """The project's entity types in display order."""
    return list(db["labels"].rows_where("project_id = ?", [project_id], order_by="position, id"))


def label_by_name(db: Database, project_id: int) -> dict[str, dict]:
    return {row["name"]: row for row in list_labels(db, project_id)}


_LABEL_NAME_RE = re.compile(r"^[^\s\[\]{}:,\"']([^\[\]{}:,\"']*[^\s\[\]{}:,\"'])?$")


#: Unicode categories no entity type name may contain: control, format (zero-width and
#: direction marks), surrogates, private use, unassigned, line and paragraph separators.
_INVISIBLE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def _check_label_name(name: str) -> str:
    if not isinstance(name, str):
        raise NerlabError(f"An entity type name must be text, got {type(name).__name__}.")
    name = name.strip()
    if not name:
        raise NerlabError("An entity type needs a name.")
    bad = next((ch for ch in name if unicodedata.category(ch) in _INVISIBLE), None)
    if bad is not None:
        raise NerlabError(
            f"Entity type name {ascii(name)} is not allowed: it contains the control or invisible "
            f"character U+{ord(bad):04X} ({unicodedata.name(bad, 'unnamed')}); names must be "
            "readable text."
        )
    if not any(unicodedata.category(ch)[0] in "LNPS" for ch in name):
        raise NerlabError(f"Entity type name {ascii(name)} is not allowed: it has no visible character.")
    if not _LABEL_NAME_RE.match(name) or len(name) > 40:
        raise NerlabError(
            f"Entity type name {name!r} is not allowed: use up to 40 characters without "
            "brackets, braces, colons, commas or quotes (they would break the model's answers)."
        )
    return name


def add_label(
    db: Database,
    project_id: int,
    name: str,
    color: str | None = None,
    hotkey: str | None = None,
    description: str = "",
) -> dict:
    """Add an entity type; colour and hotkey default to the next free ones."""
    name = _check_label_name(name)
    existing = list_labels(db, project_id)
    if any(row["name"] == name for row in existing):
        raise NerlabError(f"Entity type {name!r} already exists in this project.")
    used_keys = {row["hotkey"] for row in existing}
    if hotkey:
        hotkey = _check_hotkey(hotkey, used_keys, name)
    else:
        hotkey = next((k for k in _HOTKEYS if k not in used_keys), "")
    if not color:
        color = config.LABEL_COLOURS[len(existing) % len(config.LABEL_COLOURS)]
    _check_colour(color)
    db["labels"].insert(
        {
            "project_id": project_id,
            "name": name,
            "color": color,
            "hotkey": hotkey,
            "description": description.strip(),
            "position": len(existing),
        }
    )
    return label_by_name(db, project_id)[name]


def _check_hotkey(hotkey: str, used: set[str], name: str) -> str:
    hotkey = hotkey.strip().lower()
    if len(hotkey) != 1 or hotkey not in _HOTKEYS:
        raise NerlabError(f"Hotkey {hotkey!r} for {name!r} must be one digit 1-9 or one letter.")
    if hotkey in used:
        raise NerlabError(f"Hotkey {hotkey!r} is already used by another entity type.")
    return hotkey


def _check_colour(color: str) -> None:
    if not re.fullmatch(r"#[0-9a-fA-F]{6}", color):
        raise NerlabError(f"Colour {color!r} must look like #a1b2c3.")


def update_label(db: Database, label_id: int, **changes) -> dict:
    """Rename an entity type or change its colour, hotkey or guideline."""
    row = db["labels"].get(label_id)
    others = [r for r in list_labels(db, row["project_id"]) if r["id"] != label_id]
    update: dict = {}
    if "name" in changes and changes["name"] != row["name"]:
        name = _check_label_name(changes["name"])
        if any(r["name"] == name for r in others):
            raise NerlabError(f"Entity type {name!r} already exists in this project.")
        update["name"] = name
    if "hotkey" in changes and changes["hotkey"] != row["hotkey"]:
        update["hotkey"] = _check_hotkey(changes["hotkey"], {r["hotkey"] for r in others}, row["name"])
    if "color" in changes and changes["color"] != row["color"]:
        _check_colour(changes["color"])
        update["color"] = changes["color"]
    if "description" in changes:
        update["description"] = (changes["description"] or "").strip()
    if update:
        db["labels"].update(label_id, update)
    return db["labels"].get(label_id)


def count_label_spans(db: Database, label_id: int) -> int:
    """Gold spans of an entity type (a model's suggestions are not counted)."""
    return db["spans"].count_where("label_id = ? AND origin = 'gold'", [label_id])


def delete_label(db: Database, label_id: int) -> int:
    """Delete an entity type and its spans; return how many spans went with it."""
    n = count_label_spans(db, label_id)
    with db.atomic():
        db.execute("DELETE FROM spans WHERE label_id = ?", [label_id])
        db.execute("DELETE FROM labels WHERE id = ?", [label_id])
    return n
