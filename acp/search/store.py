"""What makes a search resumable: the evaluation history (SQLite) and the swarm checkpoint (JSON).

The checkpoint is the source of truth. An iteration ends by (1) committing its evaluation rows in one
SQLite transaction, then (2) writing the checkpoint. A crash between the two leaves rows of an iteration
the checkpoint does not know about; :meth:`History.truncate` removes them on resume and that iteration is
evaluated again (deterministically), so the history never has duplicate or lost rows.

The checkpoint file is written to a temporary file first (fsync), then the current one becomes
``checkpoint.prev.json`` and the new one takes its place. Its first line carries a SHA-256 of the rest:
a truncated or corrupted checkpoint is detected and the previous one is used, with a warning. A failed
write (a full disk) leaves the current checkpoint untouched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from acp.errors import UserError, one_line

log = logging.getLogger(__name__)

HISTORY_FILE = "history.sqlite"
CHECKPOINT_FILE = "checkpoint.json"
PREVIOUS_CHECKPOINT_FILE = "checkpoint.prev.json"
CHECKPOINT_FORMAT = "acp.search.checkpoint/1"
_HEADER = "acp-checkpoint sha256="

COLUMNS = (
    ("iteration", "INTEGER NOT NULL"),
    ("particle", "INTEGER NOT NULL"),
    ("widths", "TEXT NOT NULL"),  # JSON list of ints, in space order
    ("macs", "INTEGER"),
    ("params", "INTEGER"),
    ("score", "REAL"),  # NULL when failed
    ("accuracy", "REAL"),
    ("loss", "REAL"),
    ("seconds", "REAL"),
    ("status", "TEXT NOT NULL"),  # "ok" or "failed: <reason>"
    ("worker", "TEXT"),  # host:pid that evaluated it
    # the budget's label (``flops0.5``) in a multi-budget run, whose searches share one history; NULL in a
    # single-budget run. Histories written before it existed get the column when opened (rows: NULL).
    ("budget", "TEXT"),
)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)

# Finalists re-scored before the winner is picked (acp.search.study), keyed by the finalist evaluator's
# token and the widths: a result stays valid as long as that evaluator does, so an extended run re-scores
# only its new finalists.
FINALIST_COLUMNS = (
    ("evaluator", "TEXT NOT NULL"),  # the finalist evaluator's token
    ("widths", "TEXT NOT NULL"),
    ("macs", "INTEGER"),
    ("params", "INTEGER"),
    ("proxy_score", "REAL"),  # the search proxy's score that made it a finalist
    ("score", "REAL"),  # the finalist score; NULL when failed
    ("accuracy", "REAL"),
    ("loss", "REAL"),
    ("seconds", "REAL"),
    ("status", "TEXT NOT NULL"),
    ("worker", "TEXT"),
)
FINALIST_COLUMN_NAMES = tuple(name for name, _ in FINALIST_COLUMNS)


class History:
    """One row per evaluated candidate, in ``DIR/history.sqlite``.

    ``budget`` (a label) makes this a view of one search of a multi-budget run: rows added carry it, and
    :meth:`rows`, :meth:`truncate` and ``len()`` see only its rows. None: every row (a single-budget run,
    or a reader of the whole run).

    ``read_only`` (``acp report``, ``acp front``, report.html): nothing is written or migrated (a file
    without write permission is opened in SQLite's read-only mode); a history from before the budget
    column (or the finalists table) reads as rows of no budget (and no finalists), so a reader leaves the
    file as it found it and an older acp can still read it."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        create: bool = False,
        budget: str | None = None,
        read_only: bool = False,
    ):
        self.path = Path(path)
        self.budget = budget
        self.read_only = read_only
        self._budget_column = self._finalists_table = True
        if read_only and create:
            raise ValueError("a history cannot be created read-only")
        if not create and not self.path.is_file():
            raise UserError(f"{self.path}: history database not found")
        try:
            writable = os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)
            if read_only and not writable:  # (a writable file is opened normally: SQLite may need to
                # roll back what a killed writer left in its journal before the rows can be read)
                self._db = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True)
            else:
                self._db = sqlite3.connect(self.path)
                self._db.execute("PRAGMA synchronous=FULL")
            if create:
                columns = ", ".join(f"{name} {kind}" for name, kind in COLUMNS)
                with self._db:
                    self._db.execute(
                        f"CREATE TABLE IF NOT EXISTS evaluations (id INTEGER PRIMARY KEY, {columns})"
                    )
            self._check()
            if read_only:
                self._finalists_table = self._has_table("finalists")
            else:
                finalist_columns = ", ".join(f"{name} {kind}" for name, kind in FINALIST_COLUMNS)
                with self._db:  # histories written before re-ranking existed get the (empty) table here
                    self._db.execute(
                        f"CREATE TABLE IF NOT EXISTS finalists (id INTEGER PRIMARY KEY, {finalist_columns}, "
                        "UNIQUE (evaluator, widths))"
                    )
        except sqlite3.DatabaseError as error:
            raise UserError(
                f"{self.path} is corrupted or not an acp history database: {one_line(error)}"
            ) from None

    def _check(self) -> None:
        (verdict,) = self._db.execute("PRAGMA quick_check").fetchone()
        if verdict != "ok":
            raise sqlite3.DatabaseError(verdict)
        found = [row[1] for row in self._db.execute("PRAGMA table_info(evaluations)")]
        if found[1:] == list(COLUMN_NAMES[:-1]) and COLUMN_NAMES[-1] == "budget":
            # a history from before multi-budget runs: its rows are one budget's (NULL)
            if self.read_only:
                self._budget_column = False
            else:
                with self._db:
                    self._db.execute("ALTER TABLE evaluations ADD COLUMN budget TEXT")
            found.append("budget")
        if found[1:] != list(COLUMN_NAMES):
            raise sqlite3.DatabaseError("table 'evaluations' is missing or has other columns")

    def add(self, rows: Iterable[Mapping]) -> None:
        """Append rows in one transaction (all or nothing)."""
        records = [
            tuple(
                _sql_value(self.budget if name == "budget" and self.budget is not None else row.get(name))
                for name in COLUMN_NAMES
            )
            for row in rows
        ]
        placeholders = ", ".join("?" for _ in COLUMN_NAMES)
        with self._db:
            self._db.executemany(
                f"INSERT INTO evaluations ({', '.join(COLUMN_NAMES)}) VALUES ({placeholders})", records
            )

    def truncate(self, iteration: int) -> int:
        """Delete rows of iterations >= ``iteration`` (not covered by the checkpoint); returns how many."""
        query, arguments = "DELETE FROM evaluations WHERE iteration >= ?", (int(iteration),)
        if self.budget is not None:
            query, arguments = query + " AND budget = ?", (*arguments, self.budget)
        with self._db:
            cursor = self._db.execute(query, arguments)
        return cursor.rowcount

    def _has_table(self, name: str) -> bool:
        query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        return self._db.execute(query, (name,)).fetchone() is not None

    def _where(self) -> tuple[str, tuple]:
        if self.budget is None:
            return "", ()
        if not self._budget_column:  # an old history read as it is: none of its rows has a budget
            return " WHERE 0", ()
        return " WHERE budget = ?", (self.budget,)

    def budgets(self) -> list[str | None]:
        """The budget labels of the rows, in the order they first appear (None: a single-budget run's)."""
        if not self._budget_column:
            (count,) = self._db.execute("SELECT COUNT(*) FROM evaluations").fetchone()
            return [None] if count else []
        cursor = self._db.execute("SELECT budget FROM evaluations GROUP BY budget ORDER BY MIN(id)")
        return [value for (value,) in cursor]

    def rows(self) -> list[dict]:
        where, arguments = self._where()
        columns = ", ".join(
            "NULL AS budget" if name == "budget" and not self._budget_column else name
            for name in COLUMN_NAMES
        )
        cursor = self._db.execute(f"SELECT {columns} FROM evaluations{where} ORDER BY id", arguments)
        out = []
        for values in cursor:
            row = dict(zip(COLUMN_NAMES, values))
            row["widths"] = json.loads(row["widths"])
            out.append(row)
        return out

    def add_finalists(self, rows: Iterable[Mapping]) -> None:
        """Record finalist scores in one transaction (a row already there for the same evaluator and
        widths is kept: the evaluation is deterministic)."""
        records = [tuple(_sql_value(row.get(name)) for name in FINALIST_COLUMN_NAMES) for row in rows]
        placeholders = ", ".join("?" for _ in FINALIST_COLUMN_NAMES)
        columns = ", ".join(FINALIST_COLUMN_NAMES)
        with self._db:
            self._db.executemany(
                f"INSERT OR IGNORE INTO finalists ({columns}) VALUES ({placeholders})", records
            )

    def finalists(self, evaluator: str | None = None) -> list[dict]:
        """Finalist rows in the order they were scored (only ``evaluator``'s when given)."""
        if not self._finalists_table:
            return []
        query = f"SELECT {', '.join(FINALIST_COLUMN_NAMES)} FROM finalists"
        arguments: tuple = ()
        if evaluator is not None:
            query, arguments = query + " WHERE evaluator = ?", (evaluator,)
        out = []
        for values in self._db.execute(query + " ORDER BY id", arguments):
            row = dict(zip(FINALIST_COLUMN_NAMES, values))
            row["widths"] = json.loads(row["widths"])
            out.append(row)
        return out

    def __len__(self) -> int:
        where, arguments = self._where()
        return int(self._db.execute(f"SELECT COUNT(*) FROM evaluations{where}", arguments).fetchone()[0])

    def close(self) -> None:
        self._db.close()


def _sql_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # SQLite has no NaN/inf; a failed evaluation's score is NULL
    if isinstance(value, list | tuple):
        return json.dumps([int(v) for v in value])
    return value


# --- checkpoint -----------------------------------------------------------------------------------------


def write_checkpoint(directory: str | os.PathLike, state: Mapping) -> Path:
    """Write ``state`` (JSON-able; inf/nan allowed) as the new checkpoint, keeping the previous one."""
    directory = Path(directory)
    body = json.dumps({"format": CHECKPOINT_FORMAT, **state}, sort_keys=True, allow_nan=True)
    text = f"{_HEADER}{hashlib.sha256(body.encode()).hexdigest()}\n{body}\n"
    current, previous = directory / CHECKPOINT_FILE, directory / PREVIOUS_CHECKPOINT_FILE
    handle, temp_name = tempfile.mkstemp(prefix=f".{CHECKPOINT_FILE}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        if current.exists():
            os.replace(current, previous)
        os.replace(temp_name, current)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(directory)
    return current


def read_checkpoint(directory: str | os.PathLike) -> dict:
    """The newest valid checkpoint in ``directory``; falls back to the previous one with a warning."""
    directory = Path(directory)
    problems = []
    for name in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE):
        path = directory / name
        if not path.exists():
            problems.append(f"{name} missing")
            continue
        try:
            state = _parse_checkpoint(path.read_bytes())
        except ValueError as error:
            problems.append(f"{name} {error}")
            log.warning("checkpoint %s is unusable (%s)", path, error)
            continue
        if problems:
            log.warning("using the previous checkpoint %s (%s)", path, "; ".join(problems))
        return state
    raise UserError(f"{directory}: no valid search checkpoint to resume from ({'; '.join(problems)})")


def _parse_checkpoint(data: bytes) -> dict:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("is not text") from None
    header, _, body = text.partition("\n")
    if not header.startswith(_HEADER):
        raise ValueError("has no checksum header")
    body = body.rstrip("\n")
    if hashlib.sha256(body.encode()).hexdigest() != header[len(_HEADER) :]:
        raise ValueError("fails its checksum (truncated or corrupted)")
    state = json.loads(body)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"has format {state.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    return state


def _fsync_directory(directory: Path) -> None:
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)
