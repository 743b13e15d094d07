-- Bounded storage (as SQLite's 0009).
--
-- Repeated events: an event that changes no state (a status check, a read,
-- a refusal) is chained once per key and window; repeats within the window
-- are only counted here, and chained as one summary event when the window
-- closes. A row lives for one window at most.
CREATE TABLE audit_repeats (
    key            TEXT    COLLATE "C" NOT NULL PRIMARY KEY,   -- SHA-256 of the key fields
    window_start   BIGINT  NOT NULL,               -- time of the event that opened it
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

-- Retention: sealed audit events older than `store.retention` are
-- archived, then deleted a prefix at a time behind this checkpoint (seq and
-- hash of the last deleted event), which the rest of the chain verifies
-- from. `archiving_to` claims a prune in progress.
CREATE TABLE audit_checkpoint (
    id            BIGINT  NOT NULL PRIMARY KEY CHECK (id = 1),
    seq           BIGINT  NOT NULL,
    hash          TEXT    NOT NULL,
    archiving_to  BIGINT
);
INSERT INTO audit_checkpoint (id, seq, hash, archiving_to)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', NULL);

CREATE FUNCTION audit_checkpoint_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.id = OLD.id AND NEW.seq >= OLD.seq THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the audit checkpoint only moves forward';
END;
$$;
CREATE TRIGGER audit_checkpoint_forward BEFORE UPDATE OR DELETE ON audit_checkpoint
    FOR EACH ROW EXECUTE FUNCTION audit_checkpoint_forward_only();
CREATE TRIGGER audit_checkpoint_no_truncate BEFORE TRUNCATE ON audit_checkpoint
    FOR EACH STATEMENT EXECUTE FUNCTION audit_checkpoint_forward_only();

-- Only sealed events behind the checkpoint may be deleted.
CREATE FUNCTION audit_prune_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.seq IS NOT NULL AND OLD.seq <= (SELECT seq FROM audit_checkpoint WHERE id = 1) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'the audit trail is append-only (only events behind the checkpoint may be pruned)';
END;
$$;
DROP TRIGGER audit_no_delete ON audit;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_prune_only();

-- Finding what aged out without a scan.
CREATE INDEX credentials_by_expiry ON credentials (not_after);
CREATE INDEX tasks_by_end ON tasks (ended_at) WHERE state <> 'active';
