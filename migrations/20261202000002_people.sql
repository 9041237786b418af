-- People (#12): users can be disabled (their tokens stop working at once: every request
-- re-reads the user) and changed by admins.
alter table users add column disabled_at timestamptz;
alter table users add column updated_at timestamptz not null default now();
alter table users add constraint users_username_check
    check (length(username) between 1 and 64 and username ~ '^[A-Za-z0-9][A-Za-z0-9._@-]*$') not valid;
