-- Login sessions in the identity read model: an access token names its session, and is refused
-- once the session has ended (logout, or a replayed refresh token). Folded from the Session
-- events, which the identity projection now reads (`cohort360 rebuild identity` fills it for
-- sessions opened before this migration).
CREATE TABLE identity.sessions
(
    id         uuid PRIMARY KEY,
    username   text        NOT NULL,
    method     text        NOT NULL,
    opened_at  timestamptz NOT NULL,
    ended_at   timestamptz
);
CREATE INDEX sessions_username ON identity.sessions (username);
