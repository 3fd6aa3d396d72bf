# script/lib.sh: shared settings and helpers for script/*; source it, do not run it.
#
# Private servers for development and tests, on their own ports and under the
# project's data folder, so they never touch or collide with system-wide ones:
#   pg_up/pg_down          PostgreSQL cluster   $ISP_DATA_DIR/pg   127.0.0.1:$ISP_PG_PORT
#   nats_up/nats_down      nats-server -js      $ISP_DATA_DIR/nats 127.0.0.1:$ISP_NATS_PORT
#   radius_up/radius_down  FreeRADIUS           $ISP_DATA_DIR/freeradius
#                          127.0.0.1:$ISP_RADIUS_AUTH_PORT (auth), :$ISP_RADIUS_ACCT_PORT (acct)
# Every *_up is idempotent (a running server is left alone, a stale pid file is
# replaced) and fails with the log's tail when the server does not come up.
# Logs: $ISP_DATA_DIR/log/*.log; pid files and sockets: $ISP_DATA_DIR/run/.

ISP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
export ISP_ROOT
export ISP_DATA_DIR="${ISP_DATA_DIR:-$ISP_ROOT/.data}"
case "$ISP_DATA_DIR" in /*) ;; *) ISP_DATA_DIR="$ISP_ROOT/$ISP_DATA_DIR" ;; esac # relative: to the repo
export ISP_PG_PORT="${ISP_PG_PORT:-55432}"
export ISP_NATS_PORT="${ISP_NATS_PORT:-54222}"
export ISP_RADIUS_AUTH_PORT="${ISP_RADIUS_AUTH_PORT:-51812}"
export ISP_RADIUS_ACCT_PORT="${ISP_RADIUS_ACCT_PORT:-51813}"
export ISP_RADIUS_SECRET="${ISP_RADIUS_SECRET:-testing123}"
# FreeRADIUS's database login; the platform provisions this role (its password
# follows the platform's ISP_<SCHEMA>_DATABASE_PASSWORD convention).
export ISP_RADIUS_DB_USER="${ISP_RADIUS_DB_USER:-isp_radius}"
export ISP_RADIUS_DB_PASSWORD="${ISP_RADIUS_DB_PASSWORD:-${ISP_RADIUS_DATABASE_PASSWORD:-isp_radius}}"
export ISP_PG_DATABASE="${ISP_PG_DATABASE:-isp}"

# rustup installs cargo into ~/.cargo/bin, which non-login shells may not have.
if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-${HOME:-/nonexistent}/.cargo}/bin/cargo" ]; then
    PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi

isp_log() { printf '==> %s\n' "$*" >&2; }
isp_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# True if the pid in file $1 is alive and its command name is $2.
pid_alive() {
    local pid
    [ -f "$1" ] || return 1
    pid="$(cat "$1" 2>/dev/null)" || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

# Stops the process whose pid is in file $1 (command name $2): TERM, then KILL after 10s.
stop_pidfile() {
    local pid i
    if pid_alive "$1" "$2"; then
        pid="$(cat "$1")"
        kill "$pid" 2>/dev/null || true
        for i in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}

# spawn_bg PIDFILE LOGFILE CMD...: start CMD in the background in its own session
# (so Ctrl-C in the terminal does not reach it), output appended to LOGFILE. With
# job control off, setsid does not fork, so $! is CMD's own pid.
spawn_bg() {
    local pidfile="$1" logfile="$2"
    shift 2
    ( set +m; setsid "$@" </dev/null >>"$logfile" 2>&1 & echo $! > "$pidfile" )
}

show_log_tail() { [ -f "$1" ] && { echo "--- last lines of $1:" >&2; tail -n 30 "$1" >&2; }; return 0; }

# --- PostgreSQL -------------------------------------------------------------------

# Directory of initdb/pg_ctl/postgres/psql: $ISP_PG_BIN, else the newest
# /usr/lib/postgresql/<version>/bin (Debian), else PATH.
pg_bindir() {
    if [ -n "${ISP_PG_BIN:-}" ]; then echo "$ISP_PG_BIN"; return; fi
    local d
    d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    if [ -n "$d" ]; then echo "$d"; return; fi
    d="$(dirname "$(command -v pg_ctl 2>/dev/null || echo /nonexistent/pg_ctl)")"
    [ -x "$d/pg_ctl" ] || isp_die "PostgreSQL server binaries not found; run script/setup"
    echo "$d"
}

# Postgres refuses to run as root: as root we run it as the `postgres` OS user
# (created by the postgresql package); as anyone else, as ourselves.
pg_as() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# Where the cluster, its socket and its log live. Normally under $ISP_DATA_DIR; but
# the postgres user must be able to traverse every directory down to its data, and
# a repo under a root-only (0700) directory such as /root does not allow that. Then
# (detected, not assumed) everything Postgres touches goes to
# /var/tmp/isp-<hash of ISP_DATA_DIR>/ instead, and $ISP_DATA_DIR/log/postgres.log is a
# symlink to the real log. Same when the socket path would be too long for a unix socket.
pg_paths() {
    [ -n "${_isp_pg_paths_done:-}" ] && return 0
    mkdir -p "$ISP_DATA_DIR/log" "$ISP_DATA_DIR/run"
    chmod 0755 "$ISP_DATA_DIR" 2>/dev/null || true
    local root="$ISP_DATA_DIR"
    if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$ISP_DATA_DIR" 2>/dev/null; then
        root=""
    fi
    if [ -n "$root" ] && [ "${#root}" -gt 80 ]; then root=""; fi # sun_path is 108 bytes
    if [ -z "$root" ]; then
        # Keyed by the data dir, which is per repository by default ($ISP_ROOT/.data).
        root="/var/tmp/isp-$(printf '%s' "$ISP_DATA_DIR" | sha256sum | cut -c1-12)"
        mkdir -p "$root"
        chmod 0755 "$root"
    fi
    ISP_PG_ROOT="$root"
    _isp_pg_paths_done=1
    PGDATA_DIR="$root/pg"
    PG_SOCKET_DIR="$root/run/pg"
    PG_LOG="$root/log/postgres.log"
}

pg_running() {
    pg_paths
    [ -f "$PGDATA_DIR/PG_VERSION" ] || return 1
    pg_as "$(pg_bindir)/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1
}

# psql as the superuser over TCP (trusted for `postgres` on 127.0.0.1 only).
pg_psql() {
    "$(pg_bindir)/psql" -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$ISP_PG_PORT" -U postgres "$@"
}

# pg_up [setting=value ...]: start the private cluster (initdb on first use). The
# optional settings are passed as `-c setting=value` for this start only; script/test
# passes fsync=off synchronous_commit=off (never do that for data you keep).
pg_up() {
    local bin owner settings=() s
    bin="$(pg_bindir)"
    pg_paths
    # Already running: fine. (A postmaster just starting up or dying, e.g. after a
    # kill -9 until it is reaped, looks running for a moment: give it a few seconds.)
    local i
    for i in $(seq 1 50); do
        pg_running || break
        if port_open "$ISP_PG_PORT"; then
            # Left running by `ISP_KEEP_SERVERS=1 script/test`? Not for real data.
            if [ $# -eq 0 ] && [ "$(pg_psql -d postgres -tAc 'SHOW fsync' 2>/dev/null)" = off ]; then
                isp_log "PostgreSQL runs with fsync=off (test settings); restarting it with safe settings"
                pg_down
                break
            fi
            pg_ensure_db
            return 0
        fi
        [ "$i" -lt 50 ] || isp_die "our cluster at $PGDATA_DIR runs but 127.0.0.1:$ISP_PG_PORT does not answer; see $PG_LOG"
        sleep 0.2
    done
    if port_open "$ISP_PG_PORT"; then
        isp_die "127.0.0.1:$ISP_PG_PORT is taken by another process (not the cluster at $PGDATA_DIR); stop it or set ISP_PG_PORT"
    fi
    owner="$(id -un)"
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || isp_die "OS user 'postgres' not found; run script/setup"
        owner=postgres
    fi
    mkdir -p "$(dirname "$PGDATA_DIR")" "$PG_SOCKET_DIR" "$(dirname "$PG_LOG")"
    touch "$PG_LOG"
    chown "$owner:" "$PG_SOCKET_DIR" "$PG_LOG"
    chmod 0700 "$PG_SOCKET_DIR"
    if [ "$ISP_PG_ROOT" != "$ISP_DATA_DIR" ]; then
        ln -sfn "$PG_LOG" "$ISP_DATA_DIR/log/postgres.log"
    fi

    if [ ! -f "$PGDATA_DIR/PG_VERSION" ]; then
        isp_log "initdb $PGDATA_DIR"
        local tmp="$PGDATA_DIR.init.$$" locale_opt="--no-locale"
        rm -rf "$tmp"
        mkdir -p "$tmp"
        chown "$owner:" "$tmp"
        chmod 0700 "$tmp"
        if locale -a 2>/dev/null | grep -qix 'c.utf-\?8'; then locale_opt="--locale=C.UTF-8"; fi
        pg_as "$bin/initdb" -D "$tmp" -U postgres -E UTF8 "$locale_opt" \
            --auth-local=trust --auth-host=scram-sha-256 >"$PG_LOG.initdb" 2>&1 \
            || { show_log_tail "$PG_LOG.initdb"; rm -rf "$tmp"; isp_die "initdb failed"; }
        # Dev-only trust for the superuser, on the loopback and the private socket
        # (its directory is 0700); every other role needs its password.
        cat > "$tmp/pg_hba.conf" <<'EOF'
# Written by script/lib.sh (development cluster).
# TYPE  DATABASE  USER      ADDRESS         METHOD
local   all       postgres                  trust
local   all       all                       scram-sha-256
host    all       postgres  127.0.0.1/32    trust
host    all       all       127.0.0.1/32    scram-sha-256
EOF
        echo "include_if_exists = 'isp.conf'" >> "$tmp/postgresql.conf"
        chown "$owner:" "$tmp/pg_hba.conf"
        mv "$tmp" "$PGDATA_DIR"
    fi
    # Rewritten each start so changed ports/paths apply.
    cat > "$PGDATA_DIR/isp.conf" <<EOF
# Written by script/lib.sh on every pg_up; edit the script, not this file.
listen_addresses = '127.0.0.1'
port = $ISP_PG_PORT
unix_socket_directories = '$PG_SOCKET_DIR'
max_connections = 400
password_encryption = 'scram-sha-256'
timezone = 'UTC'
log_timezone = 'UTC'
EOF
    chown "$owner:" "$PGDATA_DIR/isp.conf"
    for s in "$@"; do settings+=("-c $s"); done
    isp_log "starting PostgreSQL on 127.0.0.1:$ISP_PG_PORT ($PGDATA_DIR${*:+; $*})"
    # pg_ctl removes a stale postmaster.pid itself; -w waits until it accepts connections.
    if ! pg_as "$bin/pg_ctl" -D "$PGDATA_DIR" -l "$PG_LOG" -w -t 120 -o "${settings[*]:-}" start >/dev/null; then
        show_log_tail "$PG_LOG"
        isp_die "PostgreSQL did not start"
    fi
    for i in $(seq 1 100); do
        "$bin/pg_isready" -q -h 127.0.0.1 -p "$ISP_PG_PORT" && break
        sleep 0.2
    done
    "$bin/pg_isready" -q -h 127.0.0.1 -p "$ISP_PG_PORT" || { show_log_tail "$PG_LOG"; isp_die "PostgreSQL does not accept connections"; }
    pg_ensure_db
}

pg_ensure_db() {
    if [ -z "$(pg_psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$ISP_PG_DATABASE'")" ]; then
        isp_log "creating database $ISP_PG_DATABASE"
        pg_psql -d postgres -qc "CREATE DATABASE \"$ISP_PG_DATABASE\" ENCODING 'UTF8' TEMPLATE template0"
    fi
}

pg_down() {
    pg_paths
    if pg_running; then
        isp_log "stopping PostgreSQL ($PGDATA_DIR)"
        pg_as "$(pg_bindir)/pg_ctl" -D "$PGDATA_DIR" -m fast -w stop >/dev/null
    fi
}

# --- NATS JetStream ----------------------------------------------------------------

NATS_PID="$ISP_DATA_DIR/run/nats.pid"
NATS_LOG="$ISP_DATA_DIR/log/nats.log"

nats_up() {
    local i
    if pid_alive "$NATS_PID" nats-server; then
        port_open "$ISP_NATS_PORT" && return 0
        isp_log "nats-server runs but does not answer; restarting"
        stop_pidfile "$NATS_PID" nats-server
    fi
    rm -f "$NATS_PID"
    command -v nats-server >/dev/null || isp_die "nats-server not found; run script/setup"
    port_open "$ISP_NATS_PORT" && isp_die "127.0.0.1:$ISP_NATS_PORT is taken by another process; stop it or set ISP_NATS_PORT"
    mkdir -p "$ISP_DATA_DIR/nats" "$ISP_DATA_DIR/run" "$ISP_DATA_DIR/log"
    isp_log "starting nats-server -js on 127.0.0.1:$ISP_NATS_PORT ($ISP_DATA_DIR/nats)"
    # Own session: Ctrl-C on script/server does not stop it (script/down does).
    spawn_bg "$NATS_PID" "$NATS_LOG" nats-server -js -a 127.0.0.1 -p "$ISP_NATS_PORT" -sd "$ISP_DATA_DIR/nats"
    for i in $(seq 1 150); do
        port_open "$ISP_NATS_PORT" && return 0
        kill -0 "$(cat "$NATS_PID")" 2>/dev/null || break
        sleep 0.2
    done
    show_log_tail "$NATS_LOG"
    stop_pidfile "$NATS_PID" nats-server
    isp_die "nats-server did not come up on 127.0.0.1:$ISP_NATS_PORT"
}

nats_down() {
    if pid_alive "$NATS_PID" nats-server; then isp_log "stopping nats-server"; fi
    stop_pidfile "$NATS_PID" nats-server
}

# --- FreeRADIUS ---------------------------------------------------------------------

RADIUS_DIR="$ISP_DATA_DIR/freeradius"
RADIUS_PID="$ISP_DATA_DIR/run/freeradius.pid"
RADIUS_LOG="$ISP_DATA_DIR/log/freeradius.log"

# True if FreeRADIUS answers a Status-Server on the auth port.
radius_answers() {
    echo "Message-Authenticator = 0x00" \
        | radclient -q -r 1 -t 1 "127.0.0.1:$ISP_RADIUS_AUTH_PORT" status "$ISP_RADIUS_SECRET" >/dev/null 2>&1
}

# Needs the `radius` schema (migrated by the NOC service) and the isp_radius role.
radius_up() {
    local i
    if pid_alive "$RADIUS_PID" freeradius; then
        radius_answers && return 0
        isp_log "FreeRADIUS runs but does not answer; restarting"
        stop_pidfile "$RADIUS_PID" freeradius
    fi
    rm -f "$RADIUS_PID"
    command -v freeradius >/dev/null || isp_die "freeradius not found; run script/setup"
    mkdir -p "$ISP_DATA_DIR/run" "$ISP_DATA_DIR/log"
    RADIUS_AUTH_PORT="$ISP_RADIUS_AUTH_PORT" RADIUS_ACCT_PORT="$ISP_RADIUS_ACCT_PORT" \
    RADIUS_CLIENT_SECRET="$ISP_RADIUS_SECRET" RADIUS_DB_HOST=127.0.0.1 \
    RADIUS_DB_PORT="$ISP_PG_PORT" RADIUS_DB_NAME="$ISP_PG_DATABASE" \
    RADIUS_DB_USER="$ISP_RADIUS_DB_USER" RADIUS_DB_PASSWORD="$ISP_RADIUS_DB_PASSWORD" \
        "$ISP_ROOT/deploy/freeradius/configure.sh" "$RADIUS_DIR" >/dev/null
    isp_log "starting FreeRADIUS on 127.0.0.1:$ISP_RADIUS_AUTH_PORT/$ISP_RADIUS_ACCT_PORT ($RADIUS_DIR)"
    spawn_bg "$RADIUS_PID" "$RADIUS_LOG" freeradius -f -l stdout -d "$RADIUS_DIR"
    for i in $(seq 1 60); do
        radius_answers && return 0
        kill -0 "$(cat "$RADIUS_PID")" 2>/dev/null || break
        sleep 0.5
    done
    show_log_tail "$RADIUS_LOG"
    stop_pidfile "$RADIUS_PID" freeradius
    isp_die "FreeRADIUS did not answer on 127.0.0.1:$ISP_RADIUS_AUTH_PORT"
}

radius_down() {
    if pid_alive "$RADIUS_PID" freeradius; then isp_log "stopping FreeRADIUS"; fi
    stop_pidfile "$RADIUS_PID" freeradius
}
