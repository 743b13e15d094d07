-- The W3C traceparent of the request that wrote each audit event (empty
-- when the caller sent none); covered by the event's hash when not empty.
ALTER TABLE audit ADD COLUMN trace TEXT NOT NULL DEFAULT '';

-- Sealing may still change nothing but the chain columns: the new column
-- joins the ones it must leave alone.
CREATE OR REPLACE FUNCTION audit_seal_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.seq IS NULL
       AND NEW.seq IS NOT NULL AND NEW.prev_hash IS NOT NULL AND NEW.hash IS NOT NULL
       AND (NEW.id, NEW.xact, NEW.time, NEW.kind, NEW.actor, NEW.task_holder, NEW.task_id,
            NEW.credential_id, NEW.decision, NEW.policies, NEW.reason, NEW.break_glass,
            NEW.ref_seq, NEW.subject, NEW.trace)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.xact, OLD.time, OLD.kind, OLD.actor, OLD.task_holder, OLD.task_id,
            OLD.credential_id, OLD.decision, OLD.policies, OLD.reason, OLD.break_glass,
            OLD.ref_seq, OLD.subject, OLD.trace)
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the audit trail is append-only (only a pending row may be sealed, once)';
END;
$$;
