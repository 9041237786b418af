-- Idempotency keys (#12): a POST carrying `Idempotency-Key` is answered once; a retry with the
-- same key and the same request gets the stored answer again instead of doing it twice. Keys
-- are per user and kept for a day. `status` is null while the first request is in progress.
create table idempotency_keys (
    owner           uuid not null,
    key             text not null check (length(key) between 1 and 200),
    request_hash    bytea not null,
    status          integer,
    content_type    text,
    body            bytea,
    created_at      timestamptz not null default now(),
    primary key (owner, key)
);
create index idempotency_keys_created on idempotency_keys (created_at);

grant select, insert, update, delete on idempotency_keys to cofre_app;
