-- People (#12): users can be disabled (their tokens stop working at once: every request
-- re-reads the user) and changed by admins.
alter table users add column disabled_at timestamptz;
alter table users add column updated_at timestamptz not null default now();
alter table users add constraint users_username_check
    check (length(username) between 1 and 64 and username ~ '^[A-Za-z0-9][A-Za-z0-9._@-]*$') not valid;

-- API tokens for scripts: scoped (never more than their creator may do), expiring, revocable,
-- stored as SHA-256 of their secret (shown once), dead when their creator is disabled.
create table api_tokens (
    id              uuid primary key,
    user_id         uuid not null references users (id),
    name            text not null check (length(name) between 1 and 100),
    secret_hash     bytea not null,
    role            text not null check (role in ('admin', 'operator', 'auditor')),
    group_id        uuid references groups (id),
    read_only       boolean not null default false,
    created_at      timestamptz not null default now(),
    expires_at      timestamptz not null,
    revoked_at      timestamptz,
    last_used_at    timestamptz
);
create index api_tokens_user on api_tokens (user_id);

grant select, insert, update on api_tokens to cofre_app;

-- Access tokens (JWTs) ended by logout before they expire; rows are useless after expires_at.
create table revoked_access_tokens (
    jti         uuid primary key,
    user_id     uuid not null references users (id),
    expires_at  timestamptz not null,
    revoked_at  timestamptz not null default now()
);
grant select, insert, delete on revoked_access_tokens to cofre_app;

-- A name people give a machine (its hostname is what the agent reports).
alter table machines add column display_name text check (length(display_name) between 1 and 100);
