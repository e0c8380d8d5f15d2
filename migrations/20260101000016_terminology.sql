-- Terminologies (code systems and value sets) the FHIR terminology API serves and the query
-- engine reads code hierarchies from. They are reference data published by outside authorities
-- (ATIH's CIM-10 and CCAM, WHO's ATC, Regenstrief's LOINC), replaced version by version by an
-- operator (`cohort360 import-terminology`), not decisions users make: they are stored as plain
-- tables, not as events (see README, "Terminologies").
CREATE SCHEMA terminology;

CREATE TABLE terminology.code_systems
(
    url        text PRIMARY KEY,
    name       text        NOT NULL,
    title      text        NOT NULL,
    version    text,
    -- 'builtin' (written by the service from its own catalogue, refreshed at start) or 'import'
    -- (loaded by an operator: the service never overwrites it).
    origin     text        NOT NULL CHECK (origin IN ('builtin', 'import')),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE terminology.concepts
(
    system      text    NOT NULL REFERENCES terminology.code_systems (url) ON DELETE CASCADE,
    code        text    NOT NULL,
    display     text    NOT NULL,
    -- the concept's parent in the code system's hierarchy (NULL: a root)
    parent      text,
    -- order within the code system (as loaded), for stable expansions
    position    integer NOT NULL,
    -- lower-cased, accent-free "code display": what a text filter matches
    search_text text    NOT NULL,
    PRIMARY KEY (system, code)
);
CREATE INDEX concepts_children ON terminology.concepts (system, parent, position);

CREATE TABLE terminology.value_sets
(
    url        text PRIMARY KEY,
    name       text        NOT NULL,
    title      text        NOT NULL,
    version    text,
    origin     text        NOT NULL CHECK (origin IN ('builtin', 'import')),
    -- the FHIR ValueSet resource as loaded (its `compose` says which codes it holds)
    resource   jsonb       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Patients of the clinical store under each perimeter (its subtree included), recounted whenever
-- clinical data is loaded: the perimeter picker's `cohort_size`.
CREATE TABLE clinical.perimeter_sizes
(
    perimeter_id bigint PRIMARY KEY,
    patients     bigint NOT NULL
);
