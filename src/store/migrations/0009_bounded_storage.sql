-- Bounded storage.
--
-- Repeated events: an event that changes no state (a status check, a read,
-- a refusal) is chained once per key and window; repeats within the window
-- are only counted here, and chained as one summary event when the window
-- closes. A row lives for one window at most.
CREATE TABLE audit_repeats (
    key            TEXT    NOT NULL PRIMARY KEY,   -- SHA-256 of the event's key fields
    window_start   BIGINT  NOT NULL,               -- time of the chained event that opened it
    repeats        BIGINT  NOT NULL,               -- repeats since, not chained yet
    first_repeat   BIGINT,
    last_repeat    BIGINT,
    last_reason    TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    actor          TEXT    NOT NULL,
    task_holder    TEXT    NOT NULL,
    task_id        TEXT    NOT NULL,
    credential_id  TEXT    NOT NULL,
    decision       TEXT    NOT NULL,
    policies       TEXT    NOT NULL,
    break_glass    BOOLEAN NOT NULL,
    subject        TEXT    NOT NULL
);
CREATE INDEX audit_repeats_by_window ON audit_repeats (window_start);

-- Retention: audit events older than `store.retention` are archived, then
-- deleted a prefix at a time behind this checkpoint (seq and hash of the
-- last deleted event), which the rest of the chain verifies from.
-- `archiving_to` claims a prune in progress: events (seq, archiving_to] are
-- being written to the archive, and no other range may be until it commits.
CREATE TABLE audit_checkpoint (
    id            INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    seq           BIGINT  NOT NULL,
    hash          TEXT    NOT NULL,
    archiving_to  BIGINT
);
INSERT INTO audit_checkpoint (id, seq, hash, archiving_to)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', NULL);
CREATE TRIGGER audit_checkpoint_forward BEFORE UPDATE ON audit_checkpoint
WHEN NEW.seq < OLD.seq OR NEW.id != OLD.id
BEGIN SELECT RAISE(ABORT, 'the audit checkpoint only moves forward'); END;
CREATE TRIGGER audit_checkpoint_no_delete BEFORE DELETE ON audit_checkpoint
BEGIN SELECT RAISE(ABORT, 'the audit checkpoint only moves forward'); END;

-- Only events behind the checkpoint may be deleted.
DROP TRIGGER audit_no_delete;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
WHEN OLD.seq > (SELECT seq FROM audit_checkpoint WHERE id = 1)
BEGIN
    SELECT RAISE(ABORT, 'the audit trail is append-only (only events behind the checkpoint may be pruned)');
END;

-- Finding what aged out without a scan.
CREATE INDEX credentials_by_expiry ON credentials (not_after);
CREATE INDEX tasks_by_end ON tasks (ended_at) WHERE state != 'active';
