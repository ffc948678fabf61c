# nginx.sh - start and stop a private nginx on 127.0.0.1 serving a directory.
# Sourced by tests and benchmarks:
#   nginx_start ROOT   -> NGINX_URL (http://127.0.0.1:PORT), NGINX_PREFIX, NGINX_LOG
#   nginx_bytes        -> sum of $body_bytes_sent in the access log so far
#   nginx_requests     -> requests in the access log so far
#   nginx_file_bytes F -> bytes sent of the file /F, nginx_file_requests F its requests
#   nginx_file_overlaps F -> ranges of /F that overlap an earlier one (a byte sent twice)
#   nginx_log_reset    -> empty the access log (nginx reopens it)
#   nginx_stop
# NGINX_LIMIT_RATE=12500k (optional) caps each connection's rate (limit_rate).
NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}

nginx_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

nginx_start() {
  local root port
  root=$(cd "$1" && pwd)
  # in the test's own work directory when there is one (its log with the rest)
  NGINX_PREFIX=$(mktemp -d "${WORK:-${TMPDIR:-/tmp}}/idd-nginx.XXXXXX")
  mkdir -p "$NGINX_PREFIX/logs" "$NGINX_PREFIX/tmp"
  NGINX_LOG=$NGINX_PREFIX/logs/access.log
  local user_line=""
  [ "$(id -u)" = 0 ] && user_line="user root;"
  local tries=0
  while :; do
    port=$(nginx_free_port)
    cat > "$NGINX_PREFIX/nginx.conf" <<CONF
$user_line
worker_processes 1;
pid $NGINX_PREFIX/nginx.pid;
error_log $NGINX_PREFIX/logs/error.log;
events { worker_connections 256; }
http {
  log_format bytes '\$request_method \$uri \$status \$body_bytes_sent "\$http_range"';
  access_log $NGINX_LOG bytes;
  client_body_temp_path $NGINX_PREFIX/tmp/body;
  proxy_temp_path $NGINX_PREFIX/tmp/proxy;
  fastcgi_temp_path $NGINX_PREFIX/tmp/fastcgi;
  uwsgi_temp_path $NGINX_PREFIX/tmp/uwsgi;
  scgi_temp_path $NGINX_PREFIX/tmp/scgi;
  types { }
  default_type application/octet-stream;
  sendfile on;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  server {
    listen 127.0.0.1:$port;
    root $root;
    location / { ${NGINX_LIMIT_RATE:+limit_rate $NGINX_LIMIT_RATE;} }
  }
}
CONF
    if "$NGINX_BIN" -p "$NGINX_PREFIX" -c "$NGINX_PREFIX/nginx.conf" 2>"$NGINX_PREFIX/start.err"; then
      break
    fi
    tries=$((tries + 1))
    if [ $tries -ge 5 ]; then
      cat "$NGINX_PREFIX/start.err" >&2
      return 1
    fi
  done
  NGINX_URL=http://127.0.0.1:$port
  local i
  for i in $(seq 50); do
    if curl -s -o /dev/null "$NGINX_URL/"; then
      # nginx logs a request after answering it: wait for the probe's line,
      # so that a log reset that follows cannot miss it and leave it behind
      for i in $(seq 50); do [ -s "$NGINX_LOG" ] && return 0; sleep 0.1; done
      return 0
    fi
    sleep 0.1
  done
  echo "nginx did not come up" >&2
  return 1
}

# PID has not exited: nginx runs as a daemon, reaped by whoever adopted it,
# so an exited nginx may stay a zombie for a while (kill -0 still succeeds)
_nginx_running() {
  local state
  { read -r _ _ state _ < "/proc/$1/stat"; } 2>/dev/null || return 1
  [ "$state" != Z ]
}

nginx_stop() {
  if [ -n "${NGINX_PREFIX:-}" ] && [ -f "$NGINX_PREFIX/nginx.pid" ]; then
    local pid
    pid=$(cat "$NGINX_PREFIX/nginx.pid")
    kill "$pid" 2>/dev/null || true
    local i
    for i in $(seq 250); do _nginx_running "$pid" || break; sleep 0.02; done
  fi
  [ -n "${NGINX_PREFIX:-}" ] && rm -rf "$NGINX_PREFIX"
  NGINX_PREFIX=
}

nginx_log_reset() {
  : > "$NGINX_LOG"
}

nginx_bytes() {
  awk '{s += $4} END {print s + 0}' "$NGINX_LOG"
}

nginx_requests() {
  wc -l < "$NGINX_LOG" | tr -d ' '
}

nginx_file_bytes() { awk -v u="/$1" '$2 == u {s += $4} END {print s + 0}' "$NGINX_LOG"; }
nginx_file_requests() { awk -v u="/$1" '$2 == u {n++} END {print n + 0}' "$NGINX_LOG"; }
nginx_file_overlaps() {
  awk -v u="/$1" '$2 == u {print $5}' "$NGINX_LOG" | python3 -c '
import re, sys
rs = sorted(tuple(map(int, m.groups())) for m in (re.search(r"bytes=(\d+)-(\d+)", l) for l in sys.stdin) if m)
print(sum(1 for a, b in zip(rs, rs[1:]) if b[0] <= a[1]))'
}
