-- Identity: id sequences (write side) and the `identity` read model (users, profiles, roles,
-- perimeters, accesses, maintenance phases).

-- Integer ids of aggregates that upstream numbers (roles, accesses, profiles, maintenance
-- phases). They live outside the projection schema: a rebuild must never reset them.
CREATE SEQUENCE role_ids;
CREATE SEQUENCE access_ids;
CREATE SEQUENCE profile_ids;
CREATE SEQUENCE maintenance_ids;

-- Everything below is derived from the event store and can be rebuilt
-- (`cohort360 rebuild identity`). No foreign keys, as for every projection schema.
CREATE SCHEMA identity;

CREATE TABLE identity.checkpoint
(
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    txid           xid8        NOT NULL DEFAULT '0',
    position       bigint      NOT NULL DEFAULT 0,
    events_applied bigint      NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO identity.checkpoint DEFAULT VALUES;

CREATE TABLE identity.users
(
    username    text PRIMARY KEY,
    firstname   text        NOT NULL,
    lastname    text        NOT NULL,
    email       text,
    created_by  text,
    updated_by  text,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    last_login  timestamptz
);
CREATE INDEX users_lastname ON identity.users (lastname, firstname);

CREATE TABLE identity.profiles
(
    id         bigint PRIMARY KEY,
    username   text        NOT NULL,
    source     text        NOT NULL,
    is_active  boolean     NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX profiles_username ON identity.profiles (username);

CREATE TABLE identity.roles
(
    id         bigint PRIMARY KEY,
    name       text        NOT NULL,
    -- the 16 `right_*` booleans, keyed by their public names
    rights     jsonb       NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    deleted_at timestamptz
);
CREATE INDEX roles_name ON identity.roles (lower(name)) WHERE deleted_at IS NULL;

CREATE TABLE identity.perimeters
(
    id                bigint PRIMARY KEY,
    local_id          text        NOT NULL,
    name              text        NOT NULL,
    short_name        text        NOT NULL,
    source_value      text        NOT NULL,
    type_source_value text        NOT NULL,
    parent_id         bigint,
    -- 1 for a root
    level             integer     NOT NULL,
    -- every ancestor id, root first: "is X under Y" is `Y = ANY(ancestors)`, served by GIN
    ancestors         bigint[]    NOT NULL,
    -- "source_value-name" of each perimeter from the root, joined with '/'
    full_path         text        NOT NULL,
    cohort_id         text,
    cohort_size       text,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    removed_at        timestamptz
);
CREATE INDEX perimeters_ancestors ON identity.perimeters USING gin (ancestors);
CREATE INDEX perimeters_parent ON identity.perimeters (parent_id);
CREATE INDEX perimeters_path ON identity.perimeters (full_path, id);
CREATE INDEX perimeters_cohort ON identity.perimeters (cohort_id);

CREATE TABLE identity.accesses
(
    id             bigint PRIMARY KEY,
    profile_id     bigint      NOT NULL,
    username       text        NOT NULL,
    role_id        bigint      NOT NULL,
    perimeter_id   bigint      NOT NULL,
    source         text        NOT NULL,
    start_datetime timestamptz NOT NULL,
    end_datetime   timestamptz NOT NULL,
    created_by     text,
    updated_by     text,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    deleted_at     timestamptz
);
CREATE INDEX accesses_username ON identity.accesses (username) WHERE deleted_at IS NULL;
CREATE INDEX accesses_perimeter ON identity.accesses (perimeter_id) WHERE deleted_at IS NULL;
CREATE INDEX accesses_role ON identity.accesses (role_id);

CREATE TABLE identity.maintenances
(
    id             bigint PRIMARY KEY,
    subject        text        NOT NULL,
    message        text,
    type           text        NOT NULL,
    start_datetime timestamptz NOT NULL,
    end_datetime   timestamptz NOT NULL,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    deleted_at     timestamptz
);
