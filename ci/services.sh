#!/usr/bin/env bash
# The services the test suite needs, installed and started idempotently (`make test` runs this
# first, so a newcomer on a fresh machine runs `make test` and nothing else):
# - PostgreSQL at 127.0.0.1:5432 with a database `test` (trust auth): started when it is down,
#   the database created when it is missing; the tests never skip it.
# - ActiveMQ (Debian's activemq) with STOMP on 127.0.0.1:61613, by ci/activemq.sh.
# - Chromium (Debian's chromium) for the admin UI's browser tests, by ci/chromium.sh.
# - tus-js-client under .cache/node/ for the upload interop tests, by ci/node_modules.sh.
# Safe to run again at any time; each step does nothing when its service is already up.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "services.sh: $*" >&2; }

if ! command -v pg_isready >/dev/null; then
  log "PostgreSQL's client tools are missing: install Debian's postgresql package"
  exit 1
fi
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  cluster_version=$(ls /etc/postgresql | head -n1)
  log "starting PostgreSQL $cluster_version/main"
  pg_ctlcluster --skip-systemctl-redirect "$cluster_version" main start
  for _ in $(seq 60); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi
pg_isready -h 127.0.0.1 -p 5432 -q || { log "PostgreSQL does not answer on 127.0.0.1:5432"; exit 1; }
psql -h 127.0.0.1 -U postgres -d postgres -tAc "select 1 from pg_database where datname = 'test'" | grep -q 1 \
  || { log "creating database test"; createdb -h 127.0.0.1 -U postgres test; }

bash ci/activemq.sh
bash ci/chromium.sh
bash ci/node_modules.sh
