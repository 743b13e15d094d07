-- The whole schema of the SQLite migrations 0001-0006, in PostgreSQL's
-- dialect: holder is the SPIFFE ID that holds a task, owner the accountable
-- team or person. Timestamps are Unix seconds. Keys, join columns and sort
-- columns use the "C" collation: byte order, as in SQLite, whatever the
-- cluster's locale, and joins between them can use their indexes.
CREATE TABLE tasks (
    holder          TEXT    COLLATE "C" NOT NULL,   -- byte order, as in SQLite
    task_id         TEXT    COLLATE "C" NOT NULL,
    created_at      BIGINT  NOT NULL,
    purpose         TEXT    NOT NULL DEFAULT '',
    ticket          TEXT    NOT NULL DEFAULT '',
    labels          TEXT    NOT NULL DEFAULT '{}',      -- JSON object
    implicit        BOOLEAN NOT NULL DEFAULT TRUE,
    deadline        BIGINT  NOT NULL DEFAULT 0,
    state           TEXT    NOT NULL DEFAULT 'active'
                    CHECK (state IN ('active', 'completed', 'expired')),
    ended_at        BIGINT,
    owner           TEXT    NOT NULL DEFAULT '',
    break_glass     BOOLEAN NOT NULL DEFAULT FALSE,
    justification   TEXT    NOT NULL DEFAULT '',
    reviewed_by     TEXT,
    reviewed_at     BIGINT,
    review_note     TEXT,
    parent_holder   TEXT    COLLATE "C",                -- delegation: the parent task's key
    parent_task_id  TEXT    COLLATE "C",
    depth           BIGINT  NOT NULL DEFAULT 0,
    audiences       TEXT    NOT NULL DEFAULT '[]',      -- JSON array
    PRIMARY KEY (holder, task_id)
);
CREATE INDEX tasks_by_deadline ON tasks (state, deadline);
CREATE INDEX tasks_by_parent ON tasks (parent_holder, parent_task_id);
CREATE INDEX tasks_by_break_glass ON tasks (break_glass, reviewed_at);

-- Every credential ever minted, committed before it is returned.
CREATE TABLE credentials (
    id                  TEXT    COLLATE "C" NOT NULL PRIMARY KEY,   -- serial hex (x509) or jti (jwt)
    kind                TEXT    NOT NULL CHECK (kind IN ('x509', 'jwt')),
    spiffe_id           TEXT    COLLATE "C" NOT NULL,
    task_holder         TEXT    COLLATE "C" NOT NULL,
    task_id             TEXT    COLLATE "C" NOT NULL,
    audience            TEXT,
    not_before          BIGINT  NOT NULL,
    not_after           BIGINT  NOT NULL,
    caller_cert_sha256  TEXT    NOT NULL,
    issued_at           BIGINT  NOT NULL,
    revoked_at          BIGINT,
    revoke_reason       TEXT,
    revocation_seq      BIGINT,
    predecessor         TEXT    COLLATE "C",            -- renewed from
    renewal_count       BIGINT  NOT NULL DEFAULT 0,
    FOREIGN KEY (task_holder, task_id) REFERENCES tasks (holder, task_id)
);
CREATE INDEX credentials_by_task ON credentials (task_holder, task_id);
CREATE INDEX credentials_by_spiffe_id ON credentials (spiffe_id);
-- One renewal per credential, whichever replica records it.
CREATE UNIQUE INDEX credentials_one_successor ON credentials (predecessor)
    WHERE predecessor IS NOT NULL;

-- The revocation log. `seq` comes from the `revocation_seq` counter, taken
-- with a row lock held until commit, so it is gap-free in commit order.
CREATE TABLE revocations (
    seq             BIGINT  NOT NULL PRIMARY KEY,
    kind            TEXT    NOT NULL CHECK (kind IN ('credential', 'task', 'workload', 'trust_domain')),
    credential_ids  TEXT    NOT NULL,   -- JSON array
    task_holder     TEXT    COLLATE "C" NOT NULL,
    task_id         TEXT    COLLATE "C" NOT NULL,
    spiffe_id       TEXT    COLLATE "C" NOT NULL,
    trust_domain    TEXT    NOT NULL,
    reason          TEXT    NOT NULL,
    revoked_at      BIGINT  NOT NULL,
    expires_at      BIGINT  NOT NULL,   -- latest expiry of what it revokes
    set_jwt         TEXT    NOT NULL    -- the same event as a signed SET
);
CREATE INDEX revocations_by_expiry ON revocations (expires_at);

CREATE TABLE counters (
    name   TEXT   NOT NULL PRIMARY KEY,
    value  BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('revocation_seq', 0), ('pruned_through', 0), ('crl_number', 0);

-- Delivery evidence: the highest sequence each subscriber acknowledged.
CREATE TABLE subscriber_acks (
    subscriber  TEXT    COLLATE "C" NOT NULL PRIMARY KEY,
    spiffe_id   TEXT    NOT NULL,
    acked_seq   BIGINT  NOT NULL,
    acked_at    BIGINT  NOT NULL
);

-- The served trust bundle's sequence: raised only when its content changes.
CREATE TABLE bundle_sequence (
    id            BIGINT  NOT NULL PRIMARY KEY CHECK (id = 1),
    content_hash  TEXT    NOT NULL,
    sequence      BIGINT  NOT NULL
);

-- The audit trail. Rows are only ever inserted (the triggers refuse the
-- rest); the hash chain, not the triggers, is what proves it.
CREATE TABLE audit (
    seq            BIGINT  NOT NULL PRIMARY KEY,
    time           BIGINT  NOT NULL,
    prev_hash      TEXT    NOT NULL,
    hash           TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    actor          TEXT    NOT NULL,
    task_holder    TEXT    NOT NULL,
    task_id        TEXT    NOT NULL,
    credential_id  TEXT    NOT NULL,
    decision       TEXT    NOT NULL,
    policies       TEXT    NOT NULL,   -- comma-separated policy ids
    reason         TEXT    NOT NULL,
    break_glass    BOOLEAN NOT NULL,
    ref_seq        BIGINT,
    subject        TEXT    NOT NULL
);
CREATE INDEX audit_by_task ON audit (task_holder, task_id, seq);
CREATE INDEX audit_acks ON audit (subject, ref_seq) WHERE kind = 'ack';

CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only';
END;
$$;
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

-- The newest event, written with it: exposes a deleted tail. Its row exists
-- from the start (seq 0 = no event yet) so every append can lock it.
CREATE TABLE audit_head (
    id    BIGINT  NOT NULL PRIMARY KEY CHECK (id = 1),
    seq   BIGINT  NOT NULL,
    hash  TEXT    NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
    VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
