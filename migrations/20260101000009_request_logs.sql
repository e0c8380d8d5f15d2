-- Request logs (`/logs/`): operational records of write requests and downloads, kept
-- REQUEST_LOG_RETENTION_DAYS. Not derived from events (no projection, no rebuild): the events a
-- write produced are the durable facts; these rows add the HTTP view for support.
CREATE SCHEMA ops;

CREATE TABLE ops.request_logs
(
    id            bigserial PRIMARY KEY,
    requested_at  timestamptz NOT NULL,
    response_ms   bigint      NOT NULL,
    username      text,
    impersonating text,
    method        text        NOT NULL,
    path          text        NOT NULL,
    view          text,
    query_params  jsonb       NOT NULL,
    data          jsonb,
    remote_addr   text,
    host          text,
    status_code   bigint      NOT NULL,
    trace_id      text        NOT NULL
);
CREATE INDEX request_logs_requested_at ON ops.request_logs (requested_at);
CREATE INDEX request_logs_username ON ops.request_logs (username, requested_at);
