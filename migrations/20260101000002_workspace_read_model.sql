-- Read model of the `workspace` projection: folders, requests, query snapshots and their patch
-- history. Everything in this schema is derived from the event store and can be dropped and
-- rebuilt (`cohort360 rebuild workspace`): the rebuild fills a copy of the schema, then swaps it
-- in. Keep it free of foreign keys to other schemas for that reason.
CREATE SCHEMA workspace;

-- The projector's own cursor, in the same schema so that a rebuilt copy carries its own.
CREATE TABLE workspace.checkpoint
(
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    txid           xid8        NOT NULL DEFAULT '0',
    position       bigint      NOT NULL DEFAULT 0,
    events_applied bigint      NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO workspace.checkpoint DEFAULT VALUES;

CREATE TABLE workspace.folders
(
    uuid        uuid PRIMARY KEY,
    owner       text        NOT NULL,
    name        text        NOT NULL,
    description text,
    created_at  timestamptz NOT NULL,
    modified_at timestamptz NOT NULL,
    deleted_at  timestamptz
);
CREATE INDEX folders_owner ON workspace.folders (owner, created_at) WHERE deleted_at IS NULL;

CREATE TABLE workspace.requests
(
    uuid               uuid PRIMARY KEY,
    owner              text        NOT NULL,
    name               text        NOT NULL,
    description        text,
    favorite           boolean     NOT NULL,
    parent_folder      uuid        NOT NULL,
    shared_by          text,
    created_at         timestamptz NOT NULL,
    modified_at        timestamptz NOT NULL,
    -- creation time of the newest snapshot (upstream's `updated_at`), or of the request itself
    updated_at         timestamptz NOT NULL,
    deleted_at         timestamptz,
    deleted_by_cascade boolean     NOT NULL DEFAULT false
);
CREATE INDEX requests_owner ON workspace.requests (owner, updated_at) WHERE deleted_at IS NULL;
CREATE INDEX requests_folder ON workspace.requests (parent_folder) WHERE deleted_at IS NULL;

CREATE TABLE workspace.query_snapshots
(
    uuid              uuid PRIMARY KEY,
    request           uuid        NOT NULL,
    owner             text        NOT NULL,
    name              text,
    version           integer     NOT NULL,
    previous_snapshot uuid,
    serialized_query  text        NOT NULL,
    perimeters_ids    text[]      NOT NULL,
    shared_by         text,
    created_at        timestamptz NOT NULL,
    modified_at       timestamptz NOT NULL,
    deleted_at        timestamptz
);
CREATE INDEX query_snapshots_request ON workspace.query_snapshots (request, created_at);
CREATE INDEX query_snapshots_previous ON workspace.query_snapshots (previous_snapshot);
CREATE INDEX query_snapshots_owner ON workspace.query_snapshots (owner, created_at) WHERE deleted_at IS NULL;

-- Earlier texts of a snapshot's query (upstream `RequestQuerySnapshotPatch`).
CREATE TABLE workspace.query_snapshot_patches
(
    snapshot         uuid        NOT NULL,
    patch_version    integer     NOT NULL,
    serialized_query text        NOT NULL,
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (snapshot, patch_version)
);
