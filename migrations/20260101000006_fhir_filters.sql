-- Saved FHIR filters, in the `cohorts` projection's schema (rebuilt with it).
CREATE TABLE cohorts.fhir_filters
(
    uuid           uuid PRIMARY KEY,
    owner          text        NOT NULL,
    fhir_resource  text        NOT NULL,
    fhir_version   text        NOT NULL,
    query_version  text        NOT NULL,
    name           text        NOT NULL,
    filter         text        NOT NULL,
    identifying    boolean     NOT NULL,
    auto_generated boolean     NOT NULL,
    created_at     timestamptz NOT NULL,
    modified_at    timestamptz NOT NULL,
    deleted_at     timestamptz
);
CREATE INDEX fhir_filters_owner ON cohorts.fhir_filters (owner, created_at) WHERE deleted_at IS NULL;
CREATE INDEX fhir_filters_name ON cohorts.fhir_filters (owner, lower(name), fhir_resource)
    WHERE deleted_at IS NULL;

-- Earlier texts of a filter (upstream `FilterFhirPatch`).
CREATE TABLE cohorts.fhir_filter_patches
(
    filter        uuid        NOT NULL,
    patch_version integer     NOT NULL,
    filter_text   text        NOT NULL,
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (filter, patch_version)
);
