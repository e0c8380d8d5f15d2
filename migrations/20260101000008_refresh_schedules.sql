-- Refresh schedules, in the `cohorts` projection's schema (rebuilt with it). The `last_refresh*`
-- fields are read from the schedule's newest count.
CREATE TABLE cohorts.refresh_schedules
(
    uuid              uuid PRIMARY KEY,
    owner             text        NOT NULL,
    request           uuid        NOT NULL,
    request_snapshot  uuid        NOT NULL,
    refresh_time      time        NOT NULL,
    refresh_frequency text        NOT NULL,
    notify_owner      boolean     NOT NULL,
    next_refresh      timestamptz NOT NULL,
    created_at        timestamptz NOT NULL,
    modified_at       timestamptz NOT NULL,
    deleted_at        timestamptz
);
CREATE INDEX refresh_schedules_owner ON cohorts.refresh_schedules (owner, created_at) WHERE deleted_at IS NULL;
CREATE INDEX refresh_schedules_due ON cohorts.refresh_schedules (next_refresh) WHERE deleted_at IS NULL;
-- Not unique: "one schedule per snapshot" is checked by the command side; a fold must never
-- refuse an event (a race would show as two schedules, not as a stuck projector).
CREATE INDEX refresh_schedules_snapshot ON cohorts.refresh_schedules (request_snapshot)
    WHERE deleted_at IS NULL;
CREATE INDEX dated_measures_schedule ON cohorts.dated_measures (refresh_schedule, created_at)
    WHERE refresh_schedule IS NOT NULL;
