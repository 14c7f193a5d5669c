#!/bin/sh
# A throwaway S3 server (Ceph radosgw on a one-node memstore cluster, auth none) on loopback.
#   scripts/radosgw.sh start DIR   # prints endpoint_url, access_key, secret_key, region
#   scripts/radosgw.sh stop DIR
# Needs: apt-get install -y radosgw ceph-mon ceph-osd. See src/darkroom/testing/radosgw.py.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}
[ -x "$python" ] || python=python3
PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m darkroom.testing.radosgw "$@"
