-- Only acknowledgement events are looked up by kind and sequence (the task
-- timeline's "acknowledged by"); index just those, so every other audit
-- insert maintains one index less.
DROP INDEX audit_by_kind;
CREATE INDEX audit_acks ON audit (subject, ref_seq) WHERE kind = 'ack';
