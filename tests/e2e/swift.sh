# swift.sh - a private single-node OpenStack Swift with the S3 API (s3api +
# tempauth) on 127.0.0.1, all state in a temporary directory.  Sourced by
# tests and benchmarks:
#   swift_start     -> SWIFT_DIR, SWIFT_URL (the S3 endpoint), and the AWS_*
#                      variables for its one user (test:tester / testing)
#   swift_s3 METHOD BUCKET[/KEY] [CURL ARGS...]   a signed request (curl --aws-sigv4)
#   swift_put FILE BUCKET/KEY                     upload a file
#   swift_mb BUCKET                               create a bucket
#   swift_stop
# Swift reads /etc/swift and logs to /dev/log unless told otherwise:
# swift_server.py points it at SWIFT_DIR and at stderr (SWIFT_DIR/*.log).
# Settings worth knowing: max_bucket_listing = ${SWIFT_MAX_LISTING:-1000}
# (a small value makes listings paginate), account_autocreate (PUT Bucket
# creates the account), the memcache filter (tempauth needs it; memcached
# runs on a loopback port of its own).
SWIFT_PY=${SWIFT_PY:-/usr/bin/python3}
SWIFT_TESTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

swift_free_ports() { # N -> N distinct free loopback ports
  "$SWIFT_PY" - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(('127.0.0.1', 0)); socks.append(s)
print(' '.join(str(s.getsockname()[1]) for s in socks))
PY
}

swift_start() {
  # in the test's own work directory when there is one (its logs with the rest)
  SWIFT_DIR=$(mktemp -d "${WORK:-${TMPDIR:-/tmp}}/idd-swift.XXXXXX")
  local d=$SWIFT_DIR ports
  ports=($(swift_free_ports 5))
  local p_mc=${ports[0]} p_acc=${ports[1]} p_con=${ports[2]} p_obj=${ports[3]} p_proxy=${ports[4]}
  mkdir -p "$d/node/d0" "$d/run"
  cat > "$d/swift.conf" <<CONF
[swift-hash]
swift_hash_path_suffix = imgdedup-test
swift_hash_path_prefix = imgdedup-test
[storage-policy:0]
name = gold
default = yes
CONF
  local common="[DEFAULT]
bind_ip = 127.0.0.1
workers = 0
swift_dir = $d
devices = $d/node
mount_check = false
log_level = ${SWIFT_LOG_LEVEL:-WARNING}
"
  local s
  for s in account container object; do
    local port_var=p_${s:0:3}
    printf '%s' "$common" > "$d/$s-server.conf"
    cat >> "$d/$s-server.conf" <<CONF
bind_port = ${!port_var}
[pipeline:main]
pipeline = $s-server
[app:$s-server]
use = egg:swift#$s
CONF
  done
  cat >> "$d/object-server.conf" <<CONF
[object-updater]
[object-auditor]
CONF
  printf '%s' "$common" > "$d/proxy-server.conf"
  cat >> "$d/proxy-server.conf" <<CONF
bind_port = $p_proxy
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth copy slo dlo proxy-logging proxy-server
[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$p_mc
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:s3api]
use = egg:swift#s3api
location = us-east-1
max_bucket_listing = ${SWIFT_MAX_LISTING:-1000}
[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
CONF
  "$SWIFT_PY" "$SWIFT_TESTS_DIR/swift_server.py" rings "$d" "$p_acc" "$p_con" "$p_obj" || return 1
  memcached -l 127.0.0.1 -p "$p_mc" -U 0 -m 16 -u "$(id -un)" -P "$d/run/memcached.pid" -d || return 1
  for s in account container object proxy; do
    "$SWIFT_PY" "$SWIFT_TESTS_DIR/swift_server.py" run "$d" "$d/$s-server.conf" "$s-server" \
      > "$d/$s.log" 2>&1 &
    echo $! > "$d/run/$s.pid"
  done
  SWIFT_URL=http://127.0.0.1:$p_proxy
  export AWS_ACCESS_KEY_ID=test:tester AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
  export AWS_ENDPOINT_URL=$SWIFT_URL
  unset AWS_PROFILE AWS_SESSION_TOKEN AWS_DEFAULT_REGION
  export AWS_SHARED_CREDENTIALS_FILE=$d/no-credentials-file
  # ready: a signed bucket creation goes through the proxy, tempauth and
  # the account and container servers (a 404 for a missing bucket is not
  # enough: the account server may still refuse, 503)
  local i code
  for i in $(seq 150); do
    if curl -sf -o /dev/null "$SWIFT_URL/healthcheck"; then
      code=$(swift_s3 PUT swift-ready-probe -o /dev/null -w '%{http_code}')
      if [ "$code" = 200 ] || [ "$code" = 409 ]; then
        swift_s3 DELETE swift-ready-probe -o /dev/null || true
        return 0
      fi
    fi
    for s in account container object proxy; do
      kill -0 "$(cat "$d/run/$s.pid")" 2>/dev/null || { echo "swift: $s server died:" >&2; tail -5 "$d/$s.log" >&2; return 1; }
    done
    sleep 0.1
  done
  echo "swift did not come up within 15 s" >&2
  return 1
}

# curl cannot take a user name with a colon from --user; credentials in the
# URL are percent-decoded, so test:tester travels as test%3Atester.
swift_s3() {
  local method=$1 path=$2; shift 2
  local user
  user=$("$SWIFT_PY" -c 'import sys, urllib.parse as u; print(u.quote(sys.argv[1], safe="") + ":" + u.quote(sys.argv[2], safe=""))' \
    "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY")
  curl -s -X "$method" --aws-sigv4 "aws:amz:$AWS_REGION:s3" -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' \
    "$@" "http://$user@${SWIFT_URL#http://}/$path"
}

swift_mb() {
  local code
  code=$(swift_s3 PUT "$1" -o /dev/null -w '%{http_code}')
  [ "$code" = 200 ] || { echo "swift: create bucket $1: HTTP $code" >&2; return 1; }
}

swift_put() {
  local code
  code=$(swift_s3 PUT "$2" -T "$1" -o /dev/null -w '%{http_code}')
  [ "$code" = 200 ] || { echo "swift: upload $1 -> $2: HTTP $code" >&2; return 1; }
}

swift_stop() {
  [ -n "${SWIFT_DIR:-}" ] || return 0
  local s pid pids=()
  for s in proxy object container account memcached; do
    if [ -f "$SWIFT_DIR/run/$s.pid" ]; then
      pid=$(cat "$SWIFT_DIR/run/$s.pid")
      kill "$pid" 2>/dev/null && pids+=("$pid")
    fi
  done
  for pid in "${pids[@]}"; do
    for s in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$SWIFT_DIR"
  SWIFT_DIR=
}
