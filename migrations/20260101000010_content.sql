-- Web contents and release notes: id sequences (write side, never reset by a rebuild) and the
-- `content` read model (derived from events, rebuildable with `cohort360 rebuild content`).
CREATE SEQUENCE content_ids;
CREATE SEQUENCE release_note_ids;

CREATE SCHEMA content;

CREATE TABLE content.checkpoint
(
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    txid           xid8        NOT NULL DEFAULT '0',
    position       bigint      NOT NULL DEFAULT 0,
    events_applied bigint      NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO content.checkpoint DEFAULT VALUES;

CREATE TABLE content.web_contents
(
    id           bigint PRIMARY KEY,
    title        text        NOT NULL,
    content      text        NOT NULL,
    page         text        NOT NULL,
    content_type text        NOT NULL,
    metadata     jsonb       NOT NULL,
    created_at   timestamptz NOT NULL,
    modified_at  timestamptz NOT NULL,
    deleted_at   timestamptz
);
CREATE INDEX web_contents_type ON content.web_contents (content_type) WHERE deleted_at IS NULL;

CREATE TABLE content.release_notes
(
    id              bigint PRIMARY KEY,
    title           text        NOT NULL,
    message         jsonb       NOT NULL,
    author          text,
    insert_datetime timestamptz NOT NULL,
    update_datetime timestamptz NOT NULL,
    delete_datetime timestamptz
);
