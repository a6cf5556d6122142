#!/bin/bash
# First start of the PostgreSQL container: the deployment's roles and databases, with
# passwords from the environment (docker-compose.yml), never from this file.
#   airflow  owns the Airflow metadata database
#   recsys   owns `shop` and runs the nightly publish (no CREATEROLE: it needs none)
#   homepage_reader  the site's read-only role (NOLOGIN), granted to the `site` login;
#            the nightly migrations grant it the views and get_homepage when they create them
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" \
     -v airflow_pw="$AIRFLOW_DB_PASSWORD" -v recsys_pw="$RECSYS_DB_PASSWORD" -v site_pw="$SITE_DB_PASSWORD" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_pw';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE recsys LOGIN PASSWORD :'recsys_pw' NOCREATEROLE NOCREATEDB;
CREATE DATABASE shop OWNER recsys;
CREATE ROLE homepage_reader NOLOGIN;
CREATE ROLE site LOGIN PASSWORD :'site_pw';
GRANT homepage_reader TO site;
SQL
