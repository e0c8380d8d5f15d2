-- The embedded clinical data store: what the embedded QueryExecutor counts and selects from.
-- It is not event-sourced: it stands for the hospital's data warehouse (loaded by
-- `cohort360 generate`, or by a site's ETL). The cohort lists the executor creates are kept here
-- too, as upstream's executor keeps them in its own tables.
CREATE SCHEMA clinical;

-- One row per load; the latest `version` is the data version counts are stamped with.
CREATE TABLE clinical.data_versions
(
    version        bigserial PRIMARY KEY,
    loaded_at      timestamptz NOT NULL DEFAULT now(),
    -- Ages and "today" in filters are computed at this date, so that a count only depends on
    -- the query and the data.
    reference_date date        NOT NULL,
    seed           bigint,
    patients       bigint      NOT NULL,
    facts          bigint      NOT NULL
);

-- Ids are dense integers (the engine keeps patient sets as bitmaps of them).
CREATE TABLE clinical.patients
(
    id           integer PRIMARY KEY,
    ipp          text    NOT NULL UNIQUE,
    gender       text    NOT NULL,
    birth_date   date    NOT NULL,
    deceased     boolean NOT NULL,
    death_date   date,
    family_name  text    NOT NULL,
    given_name   text    NOT NULL,
    -- the care site (a leaf of identity.perimeters) the patient belongs to
    perimeter_id bigint  NOT NULL
);

CREATE TABLE clinical.encounters
(
    id           integer PRIMARY KEY,
    patient_id   integer     NOT NULL,
    class        text        NOT NULL,
    start_at     timestamptz NOT NULL,
    end_at       timestamptz NOT NULL,
    episode_id   integer     NOT NULL,
    perimeter_id bigint      NOT NULL
);

-- Conditions, observations, medication requests and procedures, one table: `resource` says which
-- (C, O, M, P); the code's system follows from it (ICD-10, LOINC, ATC, CCAM).
CREATE TABLE clinical.facts
(
    id           bigint           NOT NULL,
    resource     "char"           NOT NULL,
    patient_id   integer          NOT NULL,
    encounter_id integer          NOT NULL,
    code         text             NOT NULL,
    at           timestamptz      NOT NULL,
    value        double precision,
    unit         text
);
-- Indexes are (re)built by the loader after a bulk load.

-- Patient lists of created cohorts (`group.id` in the executor's callback).
CREATE SEQUENCE clinical.group_ids START 1000001;
CREATE TABLE clinical.cohort_lists
(
    group_id     bigint PRIMARY KEY,
    target       uuid        NOT NULL UNIQUE,
    data_version bigint      NOT NULL,
    size         bigint      NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE clinical.cohort_members
(
    group_id   bigint  NOT NULL,
    patient_id integer NOT NULL,
    PRIMARY KEY (group_id, patient_id)
);
