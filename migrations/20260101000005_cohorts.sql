-- Read model of the `cohorts` projection: counts (dated measures) and cohorts. Derived from the
-- event store; `cohort360 rebuild cohorts` refills a copy and swaps it in. No foreign keys to
-- other schemas, for that reason.
CREATE SCHEMA cohorts;

CREATE TABLE cohorts.checkpoint
(
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    txid           xid8        NOT NULL DEFAULT '0',
    position       bigint      NOT NULL DEFAULT 0,
    events_applied bigint      NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO cohorts.checkpoint DEFAULT VALUES;

CREATE TABLE cohorts.dated_measures
(
    uuid                 uuid PRIMARY KEY,
    owner                text        NOT NULL,
    request              uuid        NOT NULL,
    request_query_snapshot uuid      NOT NULL,
    snapshot_version     integer     NOT NULL,
    mode                 text        NOT NULL,
    stage_details        text,
    refresh_schedule     uuid,
    measure              bigint,
    measure_min          bigint,
    measure_max          bigint,
    extra                jsonb       NOT NULL DEFAULT '{}',
    request_job_id       text,
    request_job_status   text        NOT NULL,
    request_job_fail_msg text,
    -- seconds from the request to the result
    request_job_duration double precision,
    created_at           timestamptz NOT NULL,
    modified_at          timestamptz NOT NULL,
    -- last change of the job's status (the reconciler looks for jobs without news)
    status_changed_at    timestamptz NOT NULL
);
CREATE INDEX dated_measures_owner ON cohorts.dated_measures (owner, created_at);
CREATE INDEX dated_measures_snapshot ON cohorts.dated_measures (request_query_snapshot, created_at);
CREATE INDEX dated_measures_running ON cohorts.dated_measures (request, request_job_status)
    WHERE request_job_status IN ('new', 'pending', 'started');

CREATE TABLE cohorts.cohorts
(
    uuid                   uuid PRIMARY KEY,
    owner                  text        NOT NULL,
    name                   text        NOT NULL,
    description            text,
    favorite               boolean     NOT NULL DEFAULT false,
    request                uuid        NOT NULL,
    request_query_snapshot uuid        NOT NULL,
    dated_measure          uuid,
    dated_measure_global   uuid,
    parent_cohort          uuid,
    sampling_ratio         double precision,
    is_subset              boolean     NOT NULL DEFAULT false,
    expected_size          bigint,
    group_id               text,
    result_size            bigint,
    request_job_id         text,
    request_job_status     text        NOT NULL,
    request_job_fail_msg   text,
    request_job_duration   double precision,
    created_at             timestamptz NOT NULL,
    modified_at            timestamptz NOT NULL,
    -- last change of the job's status (the reconciler looks for jobs without news)
    status_changed_at      timestamptz NOT NULL,
    deleted_at             timestamptz
);
CREATE INDEX cohorts_owner ON cohorts.cohorts (owner, created_at) WHERE deleted_at IS NULL;
CREATE INDEX cohorts_snapshot ON cohorts.cohorts (request_query_snapshot) WHERE deleted_at IS NULL;
CREATE INDEX cohorts_group ON cohorts.cohorts (group_id);
CREATE INDEX cohorts_parent ON cohorts.cohorts (parent_cohort) WHERE parent_cohort IS NOT NULL;
CREATE INDEX cohorts_running ON cohorts.cohorts (status_changed_at)
    WHERE request_job_status IN ('pending', 'started');

CREATE INDEX dated_measures_stale ON cohorts.dated_measures (status_changed_at)
    WHERE request_job_status IN ('pending', 'started');

-- Reactors' cursors: the last event each reactor handled. A reactor that appears later starts
-- at the end of the log (it reacts to what happens from then on, not to history).
CREATE TABLE public.reactor_checkpoints
(
    name       text PRIMARY KEY,
    txid       xid8        NOT NULL,
    position   bigint      NOT NULL,
    handled    bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
