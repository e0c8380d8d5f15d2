# Sourced by scripts/serve and scripts/test: makes sure PostgreSQL and NATS (JetStream) answer,
# starts them if they are installed here but stopped, and otherwise says exactly what is missing.

# host and port of a postgres:// or nats:// URL ($1), with defaults ($2 $3).
url_host_port() {
  local rest=${1#*://}
  rest=${rest#*@}
  rest=${rest%%/*}
  rest=${rest%%\?*}
  local host=${rest%%:*} port=${rest##*:}
  [ "$host" = "$rest" ] && port=$3
  [ -n "$host" ] || host=$2
  echo "$host $port"
}

tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_for_tcp() { # host port seconds
  local i
  for ((i = 0; i < $3 * 5; i++)); do
    tcp_open "$1" "$2" && return 0
    sleep 0.2
  done
  return 1
}

is_loopback() { [ "$1" = 127.0.0.1 ] || [ "$1" = localhost ] || [ "$1" = ::1 ]; }

ensure_postgres() { # url
  read -r host port < <(url_host_port "$1" 127.0.0.1 5432)
  if tcp_open "$host" "$port"; then return 0; fi
  if is_loopback "$host" && command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    echo "PostgreSQL is stopped; starting cluster $version/main ..." >&2
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_for_tcp "$host" "$port" 30 && return 0
  fi
  cat >&2 <<MSG
PostgreSQL does not answer at $host:$port.
  - Debian/Ubuntu: apt-get install postgresql, then
    pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start
  - With Docker: docker compose up -d postgres
  - Or point DATABASE_URL (service) / TEST_DATABASE_URL (tests) at a reachable server.
MSG
  return 1
}

ensure_nats() { # url
  read -r host port < <(url_host_port "$1" 127.0.0.1 4222)
  if tcp_open "$host" "$port"; then return 0; fi
  local bin
  bin=$(command -v nats-server || ls /usr/sbin/nats-server /usr/local/bin/nats-server 2>/dev/null | head -n 1)
  if is_loopback "$host" && [ -n "$bin" ]; then
    echo "NATS is stopped; starting $bin with JetStream on port $port ..." >&2
    mkdir -p /var/lib/nats-server 2>/dev/null || true
    if command -v start-stop-daemon >/dev/null 2>&1; then
      start-stop-daemon --start --oknodo --background --exec "$bin" -- \
        -a 127.0.0.1 -p "$port" -js -sd /var/lib/nats-server -l /var/log/nats-server.log || true
    else
      nohup "$bin" -a 127.0.0.1 -p "$port" -js -sd /var/lib/nats-server >/tmp/nats-server.log 2>&1 &
    fi
    wait_for_tcp "$host" "$port" 15 && return 0
  fi
  cat >&2 <<MSG
NATS does not answer at $host:$port.
  - Debian/Ubuntu: apt-get install nats-server, then
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server
    (JetStream, the -js flag, is required)
  - With Docker: docker compose up -d nats
  - Or point NATS_URL at a reachable server with JetStream enabled.
MSG
  return 1
}

ensure_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is not installed: install the Rust toolchain (https://rustup.rs) first." >&2
    return 1
  fi
}

# The tools the OpenAPI test uses: openapi-spec-validator (PyPI) and a headless Chromium
# (Debian's `chromium`). Installed when missing and possible, else named exactly.
ensure_test_tools() {
  if ! python3 -c 'import openapi_spec_validator' >/dev/null 2>&1; then
    echo "Installing openapi-spec-validator (PyPI) for the OpenAPI test ..." >&2
    python3 -m pip install --quiet 'openapi-spec-validator==0.9.0' >&2 || true
  fi
  if ! python3 -c 'import openapi_spec_validator' >/dev/null 2>&1; then
    echo "openapi-spec-validator is missing: python3 -m pip install 'openapi-spec-validator==0.9.0'" >&2
    return 1
  fi
  # Schemathesis fuzzes the API from its OpenAPI document; it lives in a virtualenv of its own
  # under target/ (its dependencies are many and pinned by it, not by the system's Python).
  local st_venv="${CARGO_TARGET_DIR:-target}/test-tools/schemathesis"
  case "$st_venv" in /*) ;; *) st_venv="$PWD/$st_venv" ;; esac
  if [ -z "${SCHEMATHESIS:-}" ] && [ ! -x "$st_venv/bin/schemathesis" ]; then
    echo "Installing schemathesis (PyPI) into $st_venv for the API fuzzing test ..." >&2
    python3 -m venv "$st_venv" >&2 && "$st_venv/bin/pip" install --quiet 'schemathesis==4.32.5' >&2 || true
  fi
  # Without a working venv module (Debian's python3-venv missing), an installed one will do.
  if [ -z "${SCHEMATHESIS:-}" ] && [ ! -x "$st_venv/bin/schemathesis" ] && command -v schemathesis >/dev/null 2>&1; then
    SCHEMATHESIS="$(command -v schemathesis)"
  fi
  export SCHEMATHESIS="${SCHEMATHESIS:-$st_venv/bin/schemathesis}"
  if ! "$SCHEMATHESIS" --version >/dev/null 2>&1; then
    echo "schemathesis is missing: python3 -m venv $st_venv && $st_venv/bin/pip install 'schemathesis==4.32.5' (Debian: apt-get install python3-venv first), or set SCHEMATHESIS to an installed one" >&2
    return 1
  fi
  if ! command -v "${CHROMIUM:-chromium}" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "Installing Debian's chromium for the Swagger UI test ..." >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2 || true
    fi
  fi
  if ! command -v "${CHROMIUM:-chromium}" >/dev/null 2>&1; then
    echo "A headless Chromium is missing: apt-get install chromium (or set CHROMIUM to its path)" >&2
    return 1
  fi
}
