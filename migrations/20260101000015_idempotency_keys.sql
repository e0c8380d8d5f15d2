-- Idempotency keys (`Idempotency-Key` on POST): the first answer of each (user, key), replayed
-- to every repeat. Operational records, kept IDEMPOTENCY_KEY_RETENTION_HOURS (24 by default),
-- not derived from events.
CREATE TABLE ops.idempotency_keys
(
    username     text        NOT NULL,
    key          text        NOT NULL,
    -- SHA-256 of the method, path, query, impersonation target and body of the first request
    fingerprint  bytea       NOT NULL,
    -- causation_id of the events the request writes
    request_id   uuid        NOT NULL,
    -- the log's last position when the request was claimed: its events come after it
    log_position bigint      NOT NULL,
    claimed_at   timestamptz NOT NULL,
    -- the answer, once given (NULL while the request runs)
    status       smallint,
    content_type text,
    consistency  text,
    body         bytea,
    completed_at timestamptz,
    PRIMARY KEY (username, key)
);
CREATE INDEX idempotency_keys_claimed_at ON ops.idempotency_keys (claimed_at);
