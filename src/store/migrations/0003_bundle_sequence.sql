-- The served trust bundle's sequence: raised only when its content changes,
-- and kept across restarts (SPIFFE `spiffe_sequence`).
CREATE TABLE bundle_sequence (
    id            INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    content_hash  TEXT    NOT NULL,
    sequence      BIGINT  NOT NULL
);
