-- Task lifecycle: every task has a hard deadline and a state.
ALTER TABLE tasks ADD COLUMN purpose TEXT NOT NULL DEFAULT '';
ALTER TABLE tasks ADD COLUMN ticket TEXT NOT NULL DEFAULT '';
ALTER TABLE tasks ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';       -- JSON object
ALTER TABLE tasks ADD COLUMN implicit BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE tasks ADD COLUMN deadline BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN state TEXT NOT NULL DEFAULT 'active'
    CHECK (state IN ('active', 'completed', 'expired'));
ALTER TABLE tasks ADD COLUMN ended_at BIGINT;
-- Tasks from before lifecycles existed end when their last credential does.
UPDATE tasks SET deadline = COALESCE(
    (SELECT MAX(not_after) FROM credentials c
      WHERE c.task_owner = tasks.owner AND c.task_id = tasks.task_id),
    created_at);
CREATE INDEX tasks_by_deadline ON tasks (state, deadline);

-- Revocation and renewal state of each credential.
ALTER TABLE credentials ADD COLUMN revoked_at BIGINT;
ALTER TABLE credentials ADD COLUMN revoke_reason TEXT;
ALTER TABLE credentials ADD COLUMN revocation_seq BIGINT;
ALTER TABLE credentials ADD COLUMN predecessor TEXT;                 -- renewed from
ALTER TABLE credentials ADD COLUMN renewal_count INTEGER NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX credentials_one_successor ON credentials (predecessor)
    WHERE predecessor IS NOT NULL;

-- The revocation log. `seq` is handed out by the single writer in commit
-- order from the `revocation_seq` counter, so it is gap-free and survives
-- pruning of old rows.
CREATE TABLE revocations (
    seq             BIGINT  NOT NULL PRIMARY KEY,
    kind            TEXT    NOT NULL CHECK (kind IN ('credential', 'task', 'workload', 'trust_domain')),
    credential_ids  TEXT    NOT NULL,   -- JSON array
    task_owner      TEXT    NOT NULL,
    task_id         TEXT    NOT NULL,
    spiffe_id       TEXT    NOT NULL,
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
    subscriber  TEXT    NOT NULL PRIMARY KEY,
    spiffe_id   TEXT    NOT NULL,
    acked_seq   BIGINT  NOT NULL,
    acked_at    BIGINT  NOT NULL
);
