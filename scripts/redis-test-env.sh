#!/usr/bin/env bash
# Sourced by scripts/test.sh: installs redis-server from Debian's packages if
# it is missing, starts the suite's shared Redis instances on free loopback
# ports (one standalone with AOF, fsync on every write; one three-master
# cluster built with redis-cli --cluster create), exports their URLs, and
# stops them when the shell exits. Tests that restart or stop Redis start
# their own instances (crates/colloquy/tests/common/redis.rs).

if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server is not installed; installing it from Debian's packages" >&2
  if command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >&2 || true
  fi
fi
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "${COLLOQUY_ALLOW_NO_REDIS:-0}" = 1 ]; then
    echo "*** redis-server cannot be installed: the Redis tests SKIP (COLLOQUY_ALLOW_NO_REDIS=1) ***" >&2
    return 0
  fi
  echo "redis-server cannot be installed; set COLLOQUY_ALLOW_NO_REDIS=1 to skip the Redis tests" >&2
  exit 1
fi

REDIS_TEST_DIR="$(mktemp -d /tmp/colloquy-redis.XXXXXX)"
REDIS_PIDS=()

redis_free_port() {
  python3 - <<'PY'
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
    if p < 55536:
        t = socket.socket()
        try:
            t.bind(("127.0.0.1", p + 10000)); t.close(); print(p); break
        except OSError:
            t.close()
PY
}

# redis_start PORT [extra args...]: a server in its own folder, waited for.
redis_start() {
  local port="$1"; shift
  local dir="$REDIS_TEST_DIR/$port"
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save "" \
    --appendonly yes --appendfsync always --daemonize no "$@" >"$dir/log" 2>&1 &
  REDIS_PIDS+=("$!")
  for _ in $(seq 200); do
    redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.05
  done
  echo "redis-server on port $port did not start:" >&2
  cat "$dir/log" >&2
  exit 1
}

redis_stop_all() {
  for pid in "${REDIS_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$REDIS_TEST_DIR"
}
trap redis_stop_all EXIT

port="$(redis_free_port)"
redis_start "$port"
export COLLOQUY_TEST_REDIS="redis://127.0.0.1:$port/0"

cluster=()
for _ in 1 2 3; do
  p="$(redis_free_port)"
  redis_start "$p" --cluster-enabled yes --cluster-node-timeout 2000 --cluster-config-file "nodes-$p.conf"
  cluster+=("127.0.0.1:$p")
done
redis-cli --cluster create "${cluster[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
for _ in $(seq 300); do
  ok=1
  for n in "${cluster[@]}"; do
    redis-cli -h "${n%:*}" -p "${n#*:}" cluster info 2>/dev/null | grep -q cluster_state:ok || ok=0
  done
  [ "$ok" = 1 ] && break
  sleep 0.1
done
[ "$ok" = 1 ] || { echo "the test Redis Cluster did not become ready" >&2; exit 1; }
export COLLOQUY_TEST_REDIS_CLUSTER="redis+cluster://$(IFS=,; echo "${cluster[*]}")"
echo "test Redis: $COLLOQUY_TEST_REDIS, cluster: $COLLOQUY_TEST_REDIS_CLUSTER" >&2
