-- The CRL every process serves, signed once per change of what it lists
-- (not per request). A new CRL replaces it only while the number it
-- replaces is still the stored one (compare-and-set), so numbers rise by one
-- per change and are never reused for other content. Numbering continues
-- from the per-request counter it replaces: a relying party never sees the
-- number go backwards across the upgrade. An empty `der` means no CRL has
-- been stored yet.
CREATE TABLE crl (
    id            INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    number        BIGINT  NOT NULL,
    content_hash  TEXT    NOT NULL,
    der           BYTEA   NOT NULL,
    this_update   BIGINT  NOT NULL,
    next_update   BIGINT  NOT NULL
);
INSERT INTO crl (id, number, content_hash, der, this_update, next_update)
VALUES (1, COALESCE((SELECT value FROM counters WHERE name = 'crl_number'), 0), '', ''::bytea, 0, 0);
DELETE FROM counters WHERE name = 'crl_number';
