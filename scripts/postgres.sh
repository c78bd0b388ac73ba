#!/usr/bin/env bash
# Prints the directory holding PostgreSQL's server binaries (initdb, postgres, pg_ctl) from
# Debian's `postgresql` package, installing it once when missing; psql and pgbench come with it
# (postgresql-client, /usr/bin). The socket-redirection tests run real blocking clients (libpq)
# against it. Idempotent; run as root on Debian. Waits for the dpkg lock rather than failing.
set -euo pipefail

find_bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/postgres" ] && command -v pgbench >/dev/null && command -v psql >/dev/null; then
      printf '%s\n' "$d"
      return
    fi
  done
}

DIR=$(find_bindir)
if [ -z "$DIR" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "postgres: not installed and not root: cannot install the postgresql package" >&2
    exit 1
  fi
  echo "postgres: installing Debian's postgresql" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends postgresql postgresql-contrib >/dev/null
  DIR=$(find_bindir)
fi
[ -n "$DIR" ] || { echo "postgres: no initdb/postgres/pgbench after installing" >&2; exit 1; }
printf '%s\n' "$DIR"
