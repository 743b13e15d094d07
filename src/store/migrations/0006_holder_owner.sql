-- One word per concept: `holder` is the SPIFFE ID that holds a task, `owner`
-- the accountable team or person. Renaming a column keeps its data, and
-- SQLite rewrites the indexes and foreign keys that name it.
ALTER TABLE tasks RENAME COLUMN owner TO holder;
ALTER TABLE tasks RENAME COLUMN accountable_owner TO owner;
ALTER TABLE tasks RENAME COLUMN parent_owner TO parent_holder;
ALTER TABLE credentials RENAME COLUMN task_owner TO task_holder;
ALTER TABLE revocations RENAME COLUMN task_owner TO task_holder;
ALTER TABLE audit RENAME COLUMN task_owner TO task_holder;
