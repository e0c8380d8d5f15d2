-- The event store. Column set of postgres-es 0.5 (`events`, `snapshots`), plus what the pipeline
-- needs on every event:
--   position     global, gap-free-in-intent sequence drawn at INSERT time (NOT commit order);
--   txid         the committing transaction's id (xid8). The relay and the projectors read events
--                in (txid, position) order and only below the oldest running transaction, which
--                makes the read gap-safe even when transactions commit out of position order;
--   recorded_at  the database time of the insert (the business time is inside the payload).
-- Metadata (acting user, impersonator, correlation and causation ids) is the JSON `metadata`
-- column written by the command bus.
CREATE TABLE events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    position       bigserial                    NOT NULL,
    txid           xid8                         NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at    timestamptz                  NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE UNIQUE INDEX events_commit_order ON events (txid, position);
CREATE UNIQUE INDEX events_position ON events (position);

-- The log is append-only: an UPDATE, DELETE or TRUNCATE is a bug or an attack, never a feature.
CREATE FUNCTION events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS
$$
BEGIN
    RAISE EXCEPTION 'the events table is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER events_no_update_or_delete
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();
CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_append_only();

-- Wakes the relay (LISTEN cohort360_events). NOTIFY is delivered at commit, once per transaction.
CREATE FUNCTION events_notify_appended() RETURNS trigger LANGUAGE plpgsql AS
$$
BEGIN
    PERFORM pg_notify('cohort360_events', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER events_appended
    AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_notify_appended();

-- Aggregate snapshots (postgres-es). One row per aggregate: the key deliberately leaves out
-- `last_sequence`, so two writers racing to create the first snapshot conflict instead of both
-- succeeding.
CREATE TABLE snapshots
(
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          json                                 NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);

-- Where each relay has published up to, as a (txid, position) cursor. Advanced only after
-- JetStream acknowledged every message up to it.
CREATE TABLE relay_checkpoints
(
    relay      text PRIMARY KEY,
    txid       xid8        NOT NULL DEFAULT '0',
    position   bigint      NOT NULL DEFAULT 0,
    published  bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
