#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine, then run it.
#   - the servers the tests start themselves: Ceph radosgw (a real S3 server; tests/conftest.py
#     s3_server) and Chromium (the playground's browser tests); PostgreSQL 15 (initdb, pg_ctl)
#     is expected on the PATH or under /usr/lib/postgresql/*/bin, and installed if missing;
#   - the package with its dev extra (which includes the server extra), in .venv (torch==2.13.0
#     is pinned).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v radosgw >/dev/null 2>&1 || missing+=(radosgw ceph-mon ceph-osd)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python3 -m venv .venv
.venv/bin/pip install -q -e '.[dev]'
exec .venv/bin/pytest -q "$@"
