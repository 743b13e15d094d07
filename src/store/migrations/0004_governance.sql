-- Governance: accountable owners, break-glass, delegation, declared
-- audiences, and the hash-chained audit trail.
ALTER TABLE tasks ADD COLUMN accountable_owner TEXT NOT NULL DEFAULT '';
ALTER TABLE tasks ADD COLUMN break_glass BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE tasks ADD COLUMN justification TEXT NOT NULL DEFAULT '';
ALTER TABLE tasks ADD COLUMN reviewed_by TEXT;
ALTER TABLE tasks ADD COLUMN reviewed_at BIGINT;
ALTER TABLE tasks ADD COLUMN review_note TEXT;
ALTER TABLE tasks ADD COLUMN parent_owner TEXT;       -- delegation: the parent task's key
ALTER TABLE tasks ADD COLUMN parent_task_id TEXT;
ALTER TABLE tasks ADD COLUMN depth INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN audiences TEXT NOT NULL DEFAULT '[]';   -- JSON array
CREATE INDEX tasks_by_parent ON tasks (parent_owner, parent_task_id);
CREATE INDEX tasks_by_break_glass ON tasks (break_glass, reviewed_at);

-- The audit trail. Rows are only ever inserted (the triggers refuse the
-- rest); the hash chain, not the triggers, is what proves it.
CREATE TABLE audit (
    seq            BIGINT  NOT NULL PRIMARY KEY,
    time           BIGINT  NOT NULL,
    prev_hash      TEXT    NOT NULL,
    hash           TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    actor          TEXT    NOT NULL,
    task_owner     TEXT    NOT NULL,
    task_id        TEXT    NOT NULL,
    credential_id  TEXT    NOT NULL,
    decision       TEXT    NOT NULL,
    policies       TEXT    NOT NULL,   -- comma-separated policy ids
    reason         TEXT    NOT NULL,
    break_glass    BOOLEAN NOT NULL,
    ref_seq        BIGINT,
    subject        TEXT    NOT NULL
);
CREATE INDEX audit_by_task ON audit (task_owner, task_id, seq);
CREATE INDEX audit_by_kind ON audit (kind, ref_seq);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;

-- The newest event, written with it: exposes a deleted tail.
CREATE TABLE audit_head (
    id    INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    seq   BIGINT  NOT NULL,
    hash  TEXT    NOT NULL
);
