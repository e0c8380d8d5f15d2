-- Feasibility studies, in the `cohorts` projection's schema (rebuilt with it). The report itself
-- is in the study's events (bucketed counts only) and is rendered on download.
CREATE TABLE cohorts.feasibility_studies
(
    uuid                   uuid PRIMARY KEY,
    owner                  text        NOT NULL,
    request                uuid        NOT NULL,
    request_query_snapshot uuid        NOT NULL,
    total_count            bigint,
    request_job_id         text,
    request_job_status     text        NOT NULL,
    request_job_fail_msg   text,
    request_job_duration   double precision,
    created_at             timestamptz NOT NULL,
    modified_at            timestamptz NOT NULL,
    status_changed_at      timestamptz NOT NULL
);
CREATE INDEX feasibility_studies_owner ON cohorts.feasibility_studies (owner, created_at);
