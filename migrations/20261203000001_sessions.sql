-- Login sessions (#12): each login opens a family of refresh tokens. A refresh token is used
-- once: using it gives a new access token and the family's next refresh token. Using one twice
-- means it was copied: the whole family ends. Logout ends the family too. Tokens are stored as
-- SHA-256 of their secret.
create table refresh_tokens (
    id              uuid primary key,
    family_id       uuid not null,
    user_id         uuid not null references users (id),
    token_hash      bytea not null unique,
    created_at      timestamptz not null default now(),
    -- The family's end: refreshing never extends a session past its login's lifetime.
    expires_at      timestamptz not null,
    used_at         timestamptz,
    revoked_at      timestamptz
);
create index refresh_tokens_family on refresh_tokens (family_id);
create index refresh_tokens_user on refresh_tokens (user_id);
create index refresh_tokens_expires on refresh_tokens (expires_at);

grant select, insert, update, delete on refresh_tokens to cofre_app;

-- The previous access-token signing key stays (sealed, as `jwt.previous`) after a rotation so
-- tokens it signed live until they expire: nothing to change in `server_keys`' shape.
