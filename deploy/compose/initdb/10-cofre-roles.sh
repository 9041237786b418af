#!/bin/sh
# Cofre's database and roles, created once by the postgres image when its volume is first
# initialised (/docker-entrypoint-initdb.d); docs/install.md runs the same SQL by hand.
#   cofre_owner  owns the database and every object: `cofre-controller migrate` connects as it
#   cofre_app    NOLOGIN group the migrations grant table privileges to (insert-only on the
#                audit log and job results)
#   cofre_serve  the login role `cofre-controller serve` connects as, a member of cofre_app
set -eu
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v owner_password="$COFRE_DB_OWNER_PASSWORD" -v app_password="$COFRE_DB_APP_PASSWORD" <<'SQL'
create role cofre_owner login password :'owner_password';
create database cofre owner cofre_owner;
create role cofre_app nologin;
create role cofre_serve login password :'app_password' in role cofre_app;
SQL
