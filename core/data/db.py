"""The SQLite store: one file, WAL mode, versioned migrations applied on open.

Text plus character-offset spans is the truth; BIO tags are derived only when training or
evaluating. Open a fresh connection per Streamlit rerun and per worker process with
:func:`get_db`; never share one connection between threads.
"""

from __future__ import annotations

import datetime as _dt
import sqlite3
from pathlib import Path

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from core import config
from core.procs import file_lock

migrations = Migrations("nerlab")


#: How long a writer waits for another process's lock before giving up (milliseconds).
BUSY_TIMEOUT_MS = 15_000


def now() -> str:
    """UTC timestamp, ISO 8601 with seconds, as stored in every ``*_at`` column."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@migrations()
def m001_initial(db: Database) -> None:
    """The tables of DESIGN.md."""
    db.executescript(
        """
        CREATE TABLE projects (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            description TEXT NOT NULL DEFAULT '',
            fixed_labels INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL
        );
        CREATE TABLE labels (
            id INTEGER PRIMARY KEY,
            project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            color TEXT NOT NULL,
            hotkey TEXT NOT NULL DEFAULT '',
            description TEXT NOT NULL DEFAULT '',
            position INTEGER NOT NULL DEFAULT 0,
            UNIQUE (project_id, name)
        );
        CREATE TABLE sentences (
            id INTEGER PRIMARY KEY,
            project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            text TEXT NOT NULL,
            tokens TEXT,
            split TEXT NOT NULL DEFAULT 'train' CHECK (split IN ('train', 'dev', 'test')),
            source TEXT NOT NULL DEFAULT '',
            hash TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'unlabelled'
                CHECK (status IN ('unlabelled', 'labelled')),
            annotator TEXT,
            version INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            UNIQUE (project_id, hash)
        );
        CREATE INDEX idx_sentences_project_position ON sentences(project_id, position);
        CREATE INDEX idx_sentences_project_status ON sentences(project_id, status);
        CREATE TABLE spans (
            id INTEGER PRIMARY KEY,
            sentence_id INTEGER NOT NULL REFERENCES sentences(id) ON DELETE CASCADE,
            start INTEGER NOT NULL,
            "end" INTEGER NOT NULL,
            label_id INTEGER NOT NULL REFERENCES labels(id) ON DELETE CASCADE,
            origin TEXT NOT NULL DEFAULT 'gold' CHECK (origin IN ('gold', 'suggested', 'model')),
            annotator TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            CHECK (start >= 0 AND "end" > start)
        );
        CREATE INDEX idx_spans_sentence ON spans(sentence_id);
        CREATE INDEX idx_spans_label ON spans(label_id);
        CREATE TABLE templates (
            id INTEGER PRIMARY KEY,
            project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            version INTEGER NOT NULL,
            instruction TEXT NOT NULL,
            output_format TEXT NOT NULL,
            settings TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL,
            UNIQUE (project_id, name, version)
        );
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
            name TEXT NOT NULL DEFAULT '',
            kind TEXT NOT NULL,
            config TEXT NOT NULL DEFAULT '{}',
            base_model TEXT NOT NULL DEFAULT '',
            template_id INTEGER REFERENCES templates(id),
            status TEXT NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued', 'running', 'finished', 'failed', 'stopped')),
            pid INTEGER,
            heartbeat_at TEXT,
            stop_requested INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            started_at TEXT,
            finished_at TEXT,
            error_kind TEXT,
            error_message TEXT,
            log_tail TEXT,
            artifact_path TEXT
        );
        CREATE INDEX idx_runs_project ON runs(project_id);
        CREATE INDEX idx_runs_status ON runs(status);
        CREATE TABLE run_metrics (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            step INTEGER NOT NULL,
            total_steps INTEGER,
            epoch REAL,
            loss REAL,
            eval_loss REAL,
            lr REAL,
            tokens_per_s REAL,
            gpu_mem_mb REAL,
            eta_s REAL,
            created_at TEXT NOT NULL
        );
        CREATE INDEX idx_run_metrics_run ON run_metrics(run_id, step);
        CREATE TABLE predictions (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            sentence_id INTEGER NOT NULL REFERENCES sentences(id) ON DELETE CASCADE,
            split TEXT NOT NULL,
            raw_output TEXT NOT NULL DEFAULT '',
            spans TEXT NOT NULL DEFAULT '[]',
            parse_status TEXT NOT NULL DEFAULT 'ok',
            created_at TEXT NOT NULL,
            UNIQUE (run_id, sentence_id)
        );
        CREATE INDEX idx_predictions_sentence ON predictions(sentence_id);
        CREATE TABLE evaluations (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            split TEXT NOT NULL,
            mode TEXT NOT NULL DEFAULT 'default',
            metrics TEXT NOT NULL,
            created_at TEXT NOT NULL,
            UNIQUE (run_id, split, mode)
        );
        """
    )


def get_db(path: str | Path | None = None) -> Database:
    """Open the NERLab database (default: the one in the data directory) and migrate it.

    Args:
        path: a database file, or ``":memory:"``; defaults to :func:`core.config.db_path`.

    Returns:
        A sqlite-utils ``Database`` with foreign keys on, WAL journal and a busy timeout.
    """
    if path is None:
        path = config.db_path()
    if str(path) == ":memory:":
        db = Database(memory=True)
        db.execute("PRAGMA foreign_keys = ON")
        migrations.apply(db)
        return db
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000)
    db = Database(conn)
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    db.execute("PRAGMA foreign_keys = ON")
    if db.journal_mode != "wal":
        db.enable_wal()
    db.execute("PRAGMA synchronous = NORMAL")
    if migrations.pending(db):
        with file_lock(Path(f"{path}.migrate.lock")):  # the UI and a worker may open a new file at once
            migrations.apply(db)
    return db


@migrations()
def m_eval_001_prediction_details_and_try(db: Database) -> None:
    """Evaluation: what the parser flagged per prediction (hallucinated entities, unknown types),
    and the Compare page's "type a sentence" requests, answered by a short worker process."""
    db.executescript(
        """
        ALTER TABLE predictions ADD COLUMN details TEXT NOT NULL DEFAULT '{}';
        CREATE TABLE try_requests (
            id INTEGER PRIMARY KEY,
            project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
            text TEXT NOT NULL,
            run_ids TEXT NOT NULL DEFAULT '[]',
            status TEXT NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued', 'running', 'finished', 'failed')),
            outputs TEXT NOT NULL DEFAULT '{}',
            error_message TEXT,
            pid INTEGER,
            created_at TEXT NOT NULL,
            finished_at TEXT
        );
        """
    )


@migrations()
def m_io_001_split_source(db: Database) -> None:
    """Where each sentence's split came from, so that a random split leaves alone what an import
    or a person placed: ``default`` (nothing named a split: train), ``import``, ``hand``,
    ``random``. Sentences stored before this migration are ``default`` in train and ``import``
    in dev and test (their origin is unknown; keeping them where they are is the safe reading)."""
    db.execute(
        "ALTER TABLE sentences ADD COLUMN split_source TEXT NOT NULL DEFAULT 'default'"
        " CHECK (split_source IN ('default', 'import', 'hand', 'random'))"
    )
    db.execute("UPDATE sentences SET split_source = 'import' WHERE split != 'train'")


@migrations()
def m_runs_001_phases(db: Database) -> None:
    """A run's phases (load or convert the model, train, dev loss, save, predict each split,
    score), each with its own progress and ETA; and when a stop was asked for."""
    db.executescript(
        """
        CREATE TABLE run_phases (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            phase TEXT NOT NULL,
            title TEXT NOT NULL,
            unit TEXT NOT NULL DEFAULT '',
            done INTEGER NOT NULL DEFAULT 0,
            total INTEGER,
            status TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'running', 'done', 'stopped', 'failed', 'skipped')),
            detail TEXT NOT NULL DEFAULT '',
            eta_s REAL,
            seconds REAL,
            started_at TEXT,
            updated_at TEXT,
            finished_at TEXT,
            UNIQUE (run_id, phase)
        );
        CREATE INDEX idx_run_phases_run ON run_phases(run_id, position);
        ALTER TABLE runs ADD COLUMN stop_requested_at TEXT;
        """
    )


@migrations()
def m_loop_001_suggestions(db: Database) -> None:
    """A model's suggestions for the labelling queue (pre-labels an annotator corrects).

    ``suggestions``: one per sentence, the latest a model made for it while it waited to be
    labelled: which run (and, for people, which model) made it, the model's confidence in the
    whole sentence (0-1, for "least confident first"), and when an annotator first saved the
    sentence with it shown (``taken_at``, ``taken_by``) and accepted the sentence
    (``reviewed_at``). Its spans are ``spans`` rows with origin ``suggested`` (each with its
    confidence where the model gives one); they are kept after the annotator's gold spans are
    saved, so that the project knows how many were accepted, changed or removed.
    ``label_settings``: where a project's suggestions come from and how often the automatic CRF
    is retrained."""
    db.executescript(
        """
        ALTER TABLE spans ADD COLUMN confidence REAL;
        CREATE TABLE suggestions (
            id INTEGER PRIMARY KEY,
            sentence_id INTEGER NOT NULL UNIQUE REFERENCES sentences(id) ON DELETE CASCADE,
            project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
            run_id INTEGER REFERENCES runs(id) ON DELETE SET NULL,
            source TEXT NOT NULL CHECK (source IN ('auto', 'run')),
            model TEXT NOT NULL DEFAULT '',
            confidence REAL,
            created_at TEXT NOT NULL,
            taken_at TEXT,
            taken_by TEXT,
            reviewed_at TEXT
        );
        CREATE INDEX idx_suggestions_project ON suggestions(project_id, confidence);
        CREATE INDEX idx_suggestions_run ON suggestions(run_id);
        CREATE TABLE label_settings (
            project_id INTEGER PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
            suggest_from TEXT NOT NULL DEFAULT '',
            auto_every INTEGER NOT NULL DEFAULT 10,
            updated_at TEXT NOT NULL
        );
        """
    )


@migrations()
def m_team_001_annotations_and_users(db: Database) -> None:
    """Teams: every annotator's own annotation of a sentence, reviews, how a project shares its
    sentences out, and the people who may sign in.

    ``annotations`` (with ``annotation_spans``): one per sentence and annotator, with its status
    and a version for optimistic concurrency (each annotator's tabs are checked against their
    own annotation; two annotators never overwrite each other) and ``seq``, the order of saves.
    The sentence's gold stays where training and evaluation read it (``spans`` with origin
    ``gold``, ``sentences.status``); ``sentences.gold_source`` says what set it (``single``,
    ``latest``, ``agreed``, ``disputed``, ``review``) and ``reviewed_by``/``reviewed_at`` who
    adjudicated it. ``reviews`` is the log of adjudications (``seen_seq``: the latest save of an
    annotation the reviewer saw).

    Every label stored before this migration becomes the annotation of its recorded annotator
    (the sentence's, else its spans', else ``import``): a labelled sentence, or one with gold
    spans (a draft), keeps exactly its spans and status."""
    db.executescript(
        """
        CREATE TABLE annotations (
            id INTEGER PRIMARY KEY,
            sentence_id INTEGER NOT NULL REFERENCES sentences(id) ON DELETE CASCADE,
            annotator TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'unlabelled'
                CHECK (status IN ('unlabelled', 'labelled')),
            version INTEGER NOT NULL DEFAULT 1,
            seq INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            UNIQUE (sentence_id, annotator)
        );
        CREATE INDEX idx_annotations_annotator ON annotations(annotator, status);
        CREATE INDEX idx_annotations_seq ON annotations(seq);
        CREATE TABLE annotation_spans (
            id INTEGER PRIMARY KEY,
            annotation_id INTEGER NOT NULL REFERENCES annotations(id) ON DELETE CASCADE,
            start INTEGER NOT NULL,
            "end" INTEGER NOT NULL,
            label_id INTEGER NOT NULL REFERENCES labels(id) ON DELETE CASCADE,
            CHECK (start >= 0 AND "end" > start)
        );
        CREATE INDEX idx_annotation_spans_annotation ON annotation_spans(annotation_id);
        CREATE INDEX idx_annotation_spans_label ON annotation_spans(label_id);
        CREATE TABLE reviews (
            id INTEGER PRIMARY KEY,
            sentence_id INTEGER NOT NULL REFERENCES sentences(id) ON DELETE CASCADE,
            reviewer TEXT NOT NULL,
            choice TEXT NOT NULL,
            spans TEXT NOT NULL DEFAULT '[]',
            seen_seq INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL
        );
        CREATE INDEX idx_reviews_sentence ON reviews(sentence_id);
        ALTER TABLE sentences ADD COLUMN gold_source TEXT;
        ALTER TABLE sentences ADD COLUMN reviewed_by TEXT;
        ALTER TABLE sentences ADD COLUMN reviewed_at TEXT;
        CREATE TABLE team_settings (
            project_id INTEGER PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
            per_sentence INTEGER NOT NULL DEFAULT 1 CHECK (per_sentence >= 0),
            updated_at TEXT NOT NULL
        );
        CREATE TABLE users (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE COLLATE NOCASE,
            password_hash TEXT,
            role TEXT NOT NULL DEFAULT 'annotator'
                CHECK (role IN ('admin', 'reviewer', 'annotator')),
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            last_sign_in_at TEXT
        );
        CREATE TABLE user_sessions (
            id INTEGER PRIMARY KEY,
            token_hash TEXT NOT NULL UNIQUE,
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL
        );
        CREATE INDEX idx_user_sessions_user ON user_sessions(user_id);
        """
    )
    # Every existing label becomes the annotation of its recorded annotator.
    db.execute(
        """
        INSERT INTO annotations (sentence_id, annotator, status, version, seq, created_at,
                                 updated_at)
        SELECT s.id,
               COALESCE(NULLIF(TRIM(s.annotator), ''),
                        (SELECT sp.annotator FROM spans sp WHERE sp.sentence_id = s.id
                           AND sp.origin = 'gold' AND COALESCE(sp.annotator, '') != ''
                         ORDER BY sp.id LIMIT 1),
                        'import'),
               s.status, 1, s.id, s.created_at, s.updated_at
        FROM sentences s
        WHERE s.status = 'labelled'
           OR EXISTS (SELECT 1 FROM spans sp WHERE sp.sentence_id = s.id AND sp.origin = 'gold')
        """
    )
    db.execute(
        """
        INSERT INTO annotation_spans (annotation_id, start, "end", label_id)
        SELECT a.id, sp.start, sp."end", sp.label_id
        FROM spans sp JOIN annotations a ON a.sentence_id = sp.sentence_id
        WHERE sp.origin = 'gold' ORDER BY sp.sentence_id, sp.start
        """
    )
    db.execute("UPDATE sentences SET gold_source = 'single' WHERE id IN"
               " (SELECT sentence_id FROM annotations)")
