-- cofre-store: stores enrolled with the controller, their certificates, what they report they
-- hold, and storage quotas per machine and per group.

-- A store serves every restic repository whose URL starts with its url (which ends with '/').
-- It is created by an admin together with a one-time enrollment token (only its hash is kept).
create table stores (
    id                  uuid primary key,
    name                text not null unique check (length(name) between 1 and 100 and name ~ '^[a-z0-9][a-z0-9_.-]*$'),
    url                 text not null unique check (url ~ '^https?://[^/]+/.*/$' or url ~ '^https?://[^/]+/$'),
    status              text not null check (status in ('pending', 'active', 'revoked')),
    token_hash          bytea,
    token_expires_at    timestamptz,
    store_version       text not null default '',
    access_list_version bigint not null default 0,
    created_at          timestamptz not null default now(),
    enrolled_at         timestamptz,
    last_seen_at        timestamptz,
    revoked_at          timestamptz
);

create table store_certificates (
    serial      text primary key,
    store_id    uuid not null references stores (id),
    not_before  timestamptz not null,
    not_after   timestamptz not null,
    issued_at   timestamptz not null default now(),
    revoked_at  timestamptz
);
create index store_certificates_store on store_certificates (store_id);

-- The latest inventory each store reported, one row per repository path it holds.
create table store_inventory (
    store_id            uuid not null references stores (id),
    path                text not null,
    size_bytes          bigint not null,
    data_objects        bigint not null,
    index_objects       bigint not null,
    snapshot_objects    bigint not null,
    key_objects         bigint not null,
    lock_objects        bigint not null,
    has_config          boolean not null,
    last_snapshot_at    timestamptz,
    snapshot_ids        text[] not null,
    reported_at         timestamptz not null default now(),
    primary key (store_id, path)
);

-- Storage quotas enforced by cofre-store (null: no limit).
alter table machines add column storage_quota_bytes bigint check (storage_quota_bytes > 0);
alter table groups add column storage_quota_bytes bigint check (storage_quota_bytes > 0);

grant select on stores, store_certificates, store_inventory to cofre_app;
grant insert, update, delete on stores, store_certificates, store_inventory to cofre_app;
