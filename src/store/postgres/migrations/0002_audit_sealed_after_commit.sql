-- The audit chain is sealed after commit instead of at write time: a
-- transaction inserts its events without seq, prev_hash or hash (taking no
-- shared lock), and a sealer numbers and chains committed rows in short
-- transactions of its own, under the audit_head row lock. Rows written
-- under 0001 are already sealed and keep their seq and hash.

-- Row identity for pending rows (seq is NULL until sealed) and the order
-- in which a transaction's rows were inserted. Existing rows get numbers
-- too; for them the number means nothing.
ALTER TABLE audit ADD COLUMN id BIGINT GENERATED ALWAYS AS IDENTITY;
-- The inserting transaction: its rows are chained together.
ALTER TABLE audit ADD COLUMN xact xid8 NOT NULL DEFAULT pg_current_xact_id();

ALTER TABLE audit DROP CONSTRAINT audit_pkey;
ALTER TABLE audit ADD PRIMARY KEY (id);
ALTER TABLE audit
    ALTER COLUMN seq DROP NOT NULL,
    ALTER COLUMN prev_hash DROP NOT NULL,
    ALTER COLUMN hash DROP NOT NULL;
ALTER TABLE audit ADD CONSTRAINT audit_seq_unique UNIQUE (seq);
-- A row is pending (all three NULL) or sealed (none NULL), never half.
ALTER TABLE audit ADD CONSTRAINT audit_sealed_whole
    CHECK ((seq IS NULL) = (prev_hash IS NULL) AND (seq IS NULL) = (hash IS NULL));
-- "Anything to seal?" is asked before every read of the trail: this index
-- holds only the pending rows, so the answer costs one small index probe.
CREATE INDEX audit_pending ON audit (xact, id) WHERE seq IS NULL;

-- An update may only seal a pending row: set seq, prev_hash and hash, and
-- change nothing else. A column added to `audit` later must be added here.
CREATE FUNCTION audit_seal_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.seq IS NULL
       AND NEW.seq IS NOT NULL AND NEW.prev_hash IS NOT NULL AND NEW.hash IS NOT NULL
       AND (NEW.id, NEW.xact, NEW.time, NEW.kind, NEW.actor, NEW.task_holder, NEW.task_id,
            NEW.credential_id, NEW.decision, NEW.policies, NEW.reason, NEW.break_glass,
            NEW.ref_seq, NEW.subject)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.xact, OLD.time, OLD.kind, OLD.actor, OLD.task_holder, OLD.task_id,
            OLD.credential_id, OLD.decision, OLD.policies, OLD.reason, OLD.break_glass,
            OLD.ref_seq, OLD.subject)
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the audit trail is append-only (only a pending row may be sealed, once)';
END;
$$;
DROP TRIGGER audit_no_update ON audit;
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_seal_only();

-- The head only moves forward and is never removed: rolling it back to hide
-- a deleted tail takes disabling this trigger first, as deleting the rows
-- takes disabling theirs.
CREATE FUNCTION audit_head_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.id = OLD.id AND NEW.seq >= OLD.seq THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION 'the audit head only moves forward';
END;
$$;
CREATE TRIGGER audit_head_forward BEFORE UPDATE OR DELETE ON audit_head
    FOR EACH ROW EXECUTE FUNCTION audit_head_forward_only();
CREATE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON audit_head
    FOR EACH STATEMENT EXECUTE FUNCTION audit_head_forward_only();
