-- Clinical notes (FHIR DocumentReference): generated with the data, searched by full text
-- (`_text`) in the FHIR API and in document criteria. Indexes are built by the loader.
CREATE TABLE clinical.documents
(
    id           bigint      NOT NULL,
    patient_id   integer     NOT NULL,
    encounter_id integer     NOT NULL,
    at           timestamptz NOT NULL,
    -- the note's kind (LOINC document type: 18842-5 discharge summary, 34111-5 emergency note)
    type         text        NOT NULL,
    title        text        NOT NULL,
    text         text        NOT NULL
);
