-- Tasks are scoped to their owner: (owner, task_id) is the key.
CREATE TABLE tasks (
    owner       TEXT    NOT NULL,
    task_id     TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (owner, task_id)
);

-- Every credential ever minted, committed before it is returned.
CREATE TABLE credentials (
    id                  TEXT    NOT NULL PRIMARY KEY, -- serial hex (x509) or jti (jwt)
    kind                TEXT    NOT NULL CHECK (kind IN ('x509', 'jwt')),
    spiffe_id           TEXT    NOT NULL,
    task_owner          TEXT    NOT NULL,
    task_id             TEXT    NOT NULL,
    audience            TEXT,
    not_before          BIGINT  NOT NULL,
    not_after           BIGINT  NOT NULL,
    caller_cert_sha256  TEXT    NOT NULL,
    issued_at           BIGINT  NOT NULL,
    FOREIGN KEY (task_owner, task_id) REFERENCES tasks (owner, task_id)
);

CREATE INDEX credentials_by_task ON credentials (task_owner, task_id);
CREATE INDEX credentials_by_spiffe_id ON credentials (spiffe_id);
