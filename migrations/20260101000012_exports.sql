-- The `exports` read model: exports, their subsets and statistics, datalabs and infrastructure
-- providers. Derived from events (rebuildable with `cohort360 rebuild exports`). Each export row
-- keeps the aggregate's folded state (`state`, the same fold as the write side) beside the columns
-- lists filter and sort on.
CREATE SCHEMA exports;

CREATE TABLE exports.checkpoint
(
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    txid           xid8        NOT NULL DEFAULT '0',
    position       bigint      NOT NULL DEFAULT 0,
    events_applied bigint      NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO exports.checkpoint DEFAULT VALUES;

CREATE TABLE exports.exports
(
    uuid          uuid PRIMARY KEY,
    owner         text        NOT NULL,
    output_format text        NOT NULL,
    status        text        NOT NULL,
    motivation    text,
    source_cohort uuid,
    group_id      text,
    datalab_name  text,
    target_name   text        NOT NULL,
    validated     boolean     NOT NULL,
    submitted     boolean     NOT NULL,
    created_at    timestamptz NOT NULL,
    modified_at   timestamptz NOT NULL,
    finished_at   timestamptz,
    cleaned_at    timestamptz,
    state         jsonb       NOT NULL
);
CREATE INDEX exports_owner ON exports.exports (owner, created_at);
CREATE INDEX exports_running ON exports.exports (status) WHERE status IN ('new', 'pending', 'started');

-- Subset cohorts, to find an export from its subset's result.
CREATE TABLE exports.subsets
(
    cohort      uuid PRIMARY KEY,
    export      uuid    NOT NULL,
    table_index integer NOT NULL
);

CREATE TABLE exports.stats
(
    export uuid NOT NULL,
    name   text NOT NULL,
    type   text NOT NULL,
    value  text NOT NULL,
    PRIMARY KEY (export, name)
);

CREATE TABLE exports.providers
(
    uuid        uuid PRIMARY KEY,
    name        text        NOT NULL,
    created_at  timestamptz NOT NULL,
    modified_at timestamptz NOT NULL,
    deleted_at  timestamptz
);

CREATE TABLE exports.datalabs
(
    uuid        uuid PRIMARY KEY,
    name        text        NOT NULL UNIQUE,
    provider    uuid        NOT NULL,
    created_at  timestamptz NOT NULL,
    modified_at timestamptz NOT NULL
);
