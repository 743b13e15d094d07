-- An overdue delivery is recorded once per subscriber and revocation, which
-- is checked before it is appended: index just those events.
CREATE INDEX audit_overdue ON audit (subject, ref_seq) WHERE kind = 'delivery_overdue';
