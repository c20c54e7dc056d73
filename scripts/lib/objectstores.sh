# shellcheck shell=bash
# Real object-store servers for the storage tests, on 127.0.0.1, each with a bucket/container
# "atoll-test":
#   S3     moto in server mode (PyPI: moto[server])
#   GCS    gcp-storage-emulator (PyPI)
#   Azure  azurite (npm)
# Installed on first use into $ATOLL_TOOLS (default /var/cache/atoll-test-tools): a Python venv and
# an npm prefix. objectstores_start exports ATOLL_TEST_S3_URL, ATOLL_TEST_GCS_URL,
# ATOLL_TEST_AZURE_URL; objectstores_stop stops what it started (by PID).

ATOLL_TOOLS=${ATOLL_TOOLS:-/var/cache/atoll-test-tools}
OBJSTORES_PIDS=()

objectstores_install() {
  local venv=$ATOLL_TOOLS/venv npm=$ATOLL_TOOLS/npm
  mkdir -p "$ATOLL_TOOLS"
  if [[ ! -x $venv/bin/moto_server || ! -x $venv/bin/gcp-storage-emulator ]] || ! "$venv/bin/python" -c 'import azure.storage.blob' 2>/dev/null; then
    if ! python3 -m venv "$venv" 2>/dev/null; then
      [[ $(id -u) == 0 ]] || { echo "python3-venv is missing; run as root to install it" >&2; return 1; }
      apt-get install -y python3-venv >&2 || { apt-get update >&2 && apt-get install -y python3-venv >&2; }
      python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]' gcp-storage-emulator azure-storage-blob >&2
  fi
  if [[ ! -x $npm/node_modules/.bin/azurite-blob ]]; then
    if ! command -v npm >/dev/null; then
      [[ $(id -u) == 0 ]] || { echo "npm is missing; run as root to install it" >&2; return 1; }
      apt-get install -y npm >&2 || { apt-get update >&2 && apt-get install -y npm >&2; }
    fi
    npm install --silent --no-audit --no-fund --prefix "$npm" azurite >&2
  fi
}

objectstores_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Wait until 127.0.0.1:$1 accepts connections (at most 60 s).
objectstores_wait() {
  local port=$1 what=$2 i
  for ((i = 0; i < 600; i++)); do
    if python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.2); s.connect(('127.0.0.1', $port))" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "$what did not start listening on 127.0.0.1:$port within 60 s; its log:" >&2
  cat "$OBJSTORES_DIR/$what.log" >&2
  return 1
}

objectstores_start() {
  objectstores_install || return 1
  local venv=$ATOLL_TOOLS/venv npm=$ATOLL_TOOLS/npm s3 gcs azure
  OBJSTORES_DIR=$(mktemp -d /tmp/atoll-objectstores.XXXXXX)
  s3=$(objectstores_port)
  "$venv/bin/moto_server" -H 127.0.0.1 -p "$s3" >"$OBJSTORES_DIR/moto.log" 2>&1 &
  OBJSTORES_PIDS+=($!)
  gcs=$(objectstores_port)
  "$venv/bin/gcp-storage-emulator" start --host 127.0.0.1 --port "$gcs" --in-memory \
    --default-bucket atolltest >"$OBJSTORES_DIR/gcs.log" 2>&1 &
  OBJSTORES_PIDS+=($!)
  azure=$(objectstores_port)
  "$npm/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$azure" --location "$OBJSTORES_DIR/azurite" \
    --skipApiVersionCheck --loose --silent >"$OBJSTORES_DIR/azurite.log" 2>&1 &
  OBJSTORES_PIDS+=($!)
  objectstores_wait "$s3" moto && objectstores_wait "$gcs" gcs && objectstores_wait "$azure" azurite || return 1
  export ATOLL_TEST_S3_URL="http://127.0.0.1:$s3"
  export ATOLL_TEST_GCS_URL="http://127.0.0.1:$gcs"
  export ATOLL_TEST_AZURE_URL="http://127.0.0.1:$azure/devstoreaccount1"
  # The buckets: moto and azurite start empty; the GCS emulator made its default bucket.
  "$venv/bin/python" - <<EOF || return 1
import boto3
from azure.storage.blob import BlobServiceClient
boto3.client("s3", endpoint_url="$ATOLL_TEST_S3_URL", region_name="us-east-1",
             aws_access_key_id="test", aws_secret_access_key="test").create_bucket(Bucket="atoll-test")
key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
conn = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=" + key +
        ";BlobEndpoint=$ATOLL_TEST_AZURE_URL;")
BlobServiceClient.from_connection_string(conn).create_container("atoll-test")
EOF
  echo "object stores for tests: s3 $ATOLL_TEST_S3_URL, gcs $ATOLL_TEST_GCS_URL, azure $ATOLL_TEST_AZURE_URL"
}

objectstores_stop() {
  local pid
  for pid in "${OBJSTORES_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${OBJSTORES_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  OBJSTORES_PIDS=()
  [[ -n ${OBJSTORES_DIR:-} ]] && rm -rf "$OBJSTORES_DIR"
  return 0
}
