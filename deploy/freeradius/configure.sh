#!/usr/bin/env bash
# deploy/freeradius/configure.sh OUTDIR
#
# Builds a private, self-contained FreeRADIUS 3.x configuration in OUTDIR from the
# distribution's one (/etc/freeradius/3.0), so a FreeRADIUS process can run on its
# own ports next to (never instead of) a system-wide one:
#   - listens on $RADIUS_LISTEN_ADDR (127.0.0.1) at $RADIUS_AUTH_PORT (auth) and
#     $RADIUS_ACCT_PORT (acct) only: every other listener (IPv6, the inner-tunnel's
#     127.0.0.1:18120, any site an admin enabled) is removed;
#   - keeps root privileges (no user/group switch) and logs under OUTDIR/log (or to
#     stdout with `freeradius -l stdout`); pid file under OUTDIR/run;
#   - enables rlm_sql for PostgreSQL against the NOC's `radius` schema. The queries
#     are the shipped ones with unqualified table names: they resolve through the
#     login role's search_path (`ALTER ROLE isp_radius SET search_path = radius`);
#   - the post-auth log (radpostauth) keeps user, answer and time but never the
#     password tried: the shipped query stores User-Password (or the CHAP
#     response) in radpostauth.pass in cleartext; ours stores '';
#   - clients.conf: one client, 127.0.0.1, secret $RADIUS_CLIENT_SECRET (plus
#     $RADIUS_CLIENT_NETWORK if set, e.g. the routers' subnet in a deployment);
#   - makes sure the MikroTik dictionary is loaded;
#   - keeps the eap module only if it loads (its TLS certificates exist); otherwise
#     eap and the inner-tunnel site are disabled. PPPoE/hotspot use PAP/CHAP.
# The result is checked with `freeradius -C`. Usage afterwards:
#   freeradius -f -d OUTDIR            (foreground; add -X for full debug output)
#
# Environment (defaults match script/lib.sh):
#   RADIUS_AUTH_PORT=51812 RADIUS_ACCT_PORT=51813 RADIUS_LISTEN_ADDR=127.0.0.1
#   RADIUS_CLIENT_SECRET=testing123 RADIUS_CLIENT_NETWORK= (none)
#   RADIUS_DB_HOST=127.0.0.1 RADIUS_DB_PORT=55432 RADIUS_DB_NAME=isp
#   RADIUS_DB_USER=isp_radius RADIUS_DB_PASSWORD=isp_radius
#   RADIUS_READ_CLIENTS=no   (yes: also load NAS clients from the `nas` table at start)
#   RADIUS_REJECT_DELAY=1    (seconds before an Access-Reject is sent; tests use 0)
#   RADIUS_SOURCE_DIR=/etc/freeradius/3.0
#   RADIUS_CHECK=yes         (no: skip the final `freeradius -C`, e.g. no binary here)
set -euo pipefail

usage() { echo "usage: $0 OUTDIR" >&2; exit 2; }
[ $# -eq 1 ] || usage

SRC="${RADIUS_SOURCE_DIR:-/etc/freeradius/3.0}"
AUTH_PORT="${RADIUS_AUTH_PORT:-51812}"
ACCT_PORT="${RADIUS_ACCT_PORT:-51813}"
LISTEN_ADDR="${RADIUS_LISTEN_ADDR:-127.0.0.1}"
CLIENT_SECRET="${RADIUS_CLIENT_SECRET:-testing123}"
CLIENT_NETWORK="${RADIUS_CLIENT_NETWORK:-}"
DB_HOST="${RADIUS_DB_HOST:-127.0.0.1}"
DB_PORT="${RADIUS_DB_PORT:-55432}"
DB_NAME="${RADIUS_DB_NAME:-isp}"
DB_USER="${RADIUS_DB_USER:-isp_radius}"
DB_PASSWORD="${RADIUS_DB_PASSWORD:-isp_radius}"
READ_CLIENTS="${RADIUS_READ_CLIENTS:-no}"
REJECT_DELAY="${RADIUS_REJECT_DELAY:-1}"
CHECK="${RADIUS_CHECK:-yes}"
MARKER=".isp-freeradius-config"

die() { echo "configure.sh: $*" >&2; exit 1; }

[ -f "$SRC/radiusd.conf" ] || die "$SRC/radiusd.conf not found (is the freeradius package installed?)"
[ -r "$SRC/radiusd.conf" ] || die "$SRC/radiusd.conf is not readable by $(id -un) (run as root)"
case "$AUTH_PORT$ACCT_PORT$DB_PORT$REJECT_DELAY" in *[!0-9]*) die "ports and RADIUS_REJECT_DELAY must be numbers";; esac
case "$READ_CLIENTS" in yes|no) ;; *) die "RADIUS_READ_CLIENTS must be yes or no";; esac

# A FreeRADIUS double-quoted string: escape backslashes and double quotes.
q() { local s=${1//\\/\\\\}; printf '"%s"' "${s//\"/\\\"}"; }

# --- 1. Fresh copy ---------------------------------------------------------------
mkdir -p "$1"
OUT="$(cd "$1" && pwd -P)"
[ "$OUT" != "$(cd "$SRC" && pwd -P)" ] || die "OUTDIR must not be the source directory"
if [ -n "$(ls -A "$OUT")" ]; then
    # Only ever wipe a directory this script produced.
    [ -f "$OUT/$MARKER" ] || die "$OUT is not empty and was not made by this script; refusing to overwrite"
    find "$OUT" -mindepth 1 -delete
fi
# -P: copy symlinks as symlinks. Debian's mods-enabled/* and sites-enabled/* are
# relative (../mods-available/x), so they resolve inside OUT once copied.
cp -R -P --preserve=mode,timestamps "$SRC/." "$OUT/"
touch "$OUT/$MARKER"
# Re-point absolute links that lead back into SRC; copy any other absolute link's
# target so nothing in OUT depends on files we would edit elsewhere.
for link in "$OUT"/mods-enabled/* "$OUT"/sites-enabled/*; do
    [ -L "$link" ] || continue
    target="$(readlink "$link")"
    case "$target" in
        "$SRC"/*) ln -sfn "$OUT/${target#"$SRC"/}" "$link" ;;
        /*) cp --remove-destination "$(readlink -f "$link")" "$link" ;;
    esac
done
mkdir -p "$OUT/log/radacct" "$OUT/run"

# --- 2. radiusd.conf -------------------------------------------------------------
conf="$OUT/radiusd.conf"
# sed -E with a check that each rule matched, so a changed upstream file fails loudly.
edit() { # file, grep-regex that must match first, sed expression
    grep -Eq "$2" "$1" || die "$(basename "$1"): no line matches /$2/ (unexpected FreeRADIUS version?)"
    sed -E -i "$3" "$1"
}
edit "$conf" '^raddbdir = '  "s|^raddbdir = .*|raddbdir = $OUT|"
edit "$conf" '^logdir = '    "s|^logdir = .*|logdir = $OUT/log|"
edit "$conf" '^run_dir = '   "s|^run_dir = .*|run_dir = $OUT/run|"
# Stay root: no privilege drop (the private copy is owned by whoever runs this).
edit "$conf" '^[[:space:]]*user = '  's|^([[:space:]]*)user = |\1#user = |'
edit "$conf" '^[[:space:]]*group = ' 's|^([[:space:]]*)group = |\1#group = |'
edit "$conf" '^[[:space:]]*reject_delay = ' "s|^([[:space:]]*)reject_delay = .*|\\1reject_delay = $REJECT_DELAY|"
# One line per Access-Accept/Reject in the log: what an operator looks for first.
edit "$conf" '^[[:space:]]*auth = no' 's|^([[:space:]]*)auth = no|\1auth = yes|'

# --- 3. Listeners ------------------------------------------------------------------
# Drop every top-level `listen { ... }` block of every enabled site (the shipped
# default has IPv4+IPv6 auth/acct on 1812/1813, inner-tunnel has 127.0.0.1:18120),
# then give the default site exactly our two. Enabled sites are made regular files
# so the edit never depends on where a link points.
strip_listen='
    !inb && /^[[:space:]]*listen[[:space:]]*\{/ { inb = 1; depth = 0 }
    inb {
        line = $0; sub(/#.*/, "", line)
        depth += gsub(/\{/, "{", line) - gsub(/\}/, "}", line)
        if (depth <= 0) inb = 0
        next
    }
    { print }'
for site in "$OUT"/sites-enabled/*; do
    [ -e "$site" ] || continue
    real="$(readlink -f "$site")"
    tmp="$(mktemp "$OUT/.site.XXXXXX")"
    awk "$strip_listen" "$real" > "$tmp"
    rm -f "$site"
    mv "$tmp" "$site"
    chmod 0640 "$site"
done
[ -f "$OUT/sites-enabled/default" ] || die "sites-enabled/default is missing in $SRC"
listeners="$(mktemp "$OUT/.listen.XXXXXX")"
cat > "$listeners" <<EOF
# --- private listeners written by deploy/freeradius/configure.sh ---
listen {
	type = auth
	ipaddr = $LISTEN_ADDR
	port = $AUTH_PORT
	limit {
		max_connections = 16
		lifetime = 0
		idle_timeout = 30
	}
}
listen {
	type = acct
	ipaddr = $LISTEN_ADDR
	port = $ACCT_PORT
}
EOF
grep -Eq '^server default \{' "$OUT/sites-enabled/default" || die "sites-enabled/default has no 'server default {'"
awk -v f="$listeners" '{ print } /^server default \{/ { while ((getline l < f) > 0) print l }' \
    "$OUT/sites-enabled/default" > "$listeners.site"
mv "$listeners.site" "$OUT/sites-enabled/default"
rm -f "$listeners"

# --- 4. SQL module -----------------------------------------------------------------
# Tables are unqualified on purpose: isp_radius's search_path is `radius`.
cat > "$OUT/mods-available/sql" <<EOF
# Written by deploy/freeradius/configure.sh: PostgreSQL, NOC's \`radius\` schema.
sql {
	dialect = "postgresql"
	driver = "rlm_sql_\${dialect}"

	server = $(q "$DB_HOST")
	port = $DB_PORT
	login = $(q "$DB_USER")
	password = $(q "$DB_PASSWORD")
	radius_db = $(q "$DB_NAME")

	postgresql {
		send_application_name = yes
	}

	acct_table1 = "radacct"
	acct_table2 = "radacct"
	postauth_table = "radpostauth"
	authcheck_table = "radcheck"
	groupcheck_table = "radgroupcheck"
	authreply_table = "radreply"
	groupreply_table = "radgroupreply"
	usergroup_table = "radusergroup"

	delete_stale_sessions = yes

	# Small pool: one connection at start, reconnect quickly after a database restart.
	# max as upstream: one connection per worker thread. With fewer, a busy server
	# answers Access-Reject ("Cannot open new connection, already at max") to
	# subscribers whose credentials are fine (script/bench-radius showed it at -p 64).
	pool {
		start = 1
		min = 1
		max = \${thread[pool].max_servers}
		spare = 4
		uses = 0
		retry_delay = 1
		lifetime = 0
		idle_timeout = 60
	}

	# yes: load NAS clients from the \`nas\` table at start (in addition to clients.conf).
	read_clients = $READ_CLIENTS
	client_table = "nas"

	group_attribute = "SQL-Group"

	\$INCLUDE \${modconfdir}/\${.:name}/main/\${dialect}/queries.conf
}
EOF
chmod 0640 "$OUT/mods-available/sql"
ln -sfn ../mods-available/sql "$OUT/mods-enabled/sql"

# The shipped post-auth query logs every attempted password (PAP User-Password, or
# the CHAP response) into radpostauth.pass. Store '' instead; username, reply
# (Access-Accept/Reject) and authdate stay, which is what an operator looks up.
queries="$OUT/mods-config/sql/main/postgresql/queries.conf"
[ -L "$queries" ] && cp --remove-destination "$(readlink -f "$queries")" "$queries"
edit "$queries" "'%\\{%\\{User-Password\\}:-%\\{Chap-Password\\}\\}'" \
    "s/'%\\{%\\{User-Password\\}:-%\\{Chap-Password\\}\\}'/''/"
if grep -Eq 'User-Password|Chap-Password' "$queries"; then
    die "$queries still refers to the password after the post-auth edit"
fi

# --- 5. Clients --------------------------------------------------------------------
{
    echo "# Written by deploy/freeradius/configure.sh."
    echo "client localhost {"
    echo "	ipaddr = 127.0.0.1"
    echo "	proto = *"
    echo "	secret = $(q "$CLIENT_SECRET")"
    echo "	require_message_authenticator = no"
    echo "	nas_type = other"
    echo "}"
    if [ -n "$CLIENT_NETWORK" ]; then
        echo "client routers {"
        echo "	ipaddr = $CLIENT_NETWORK"
        echo "	secret = $(q "$CLIENT_SECRET")"
        echo "	require_message_authenticator = no"
        echo "	nas_type = other"
        echo "}"
    fi
} > "$OUT/clients.conf"
chmod 0640 "$OUT/clients.conf"

# --- 6. Dictionary -----------------------------------------------------------------
# Debian's main dictionary ($INCLUDE'd before raddb/dictionary) already pulls in
# dictionary.mikrotik; add it to the local dictionary only if it does not.
dictdir=/usr/share/freeradius
if [ -f "$dictdir/dictionary" ] && ! grep -Eq '^\$INCLUDE[[:space:]]+dictionary\.mikrotik' "$dictdir/dictionary"; then
    [ -f "$dictdir/dictionary.mikrotik" ] || die "$dictdir/dictionary.mikrotik not found"
    printf '\n$INCLUDE %s/dictionary.mikrotik\n' "$dictdir" >> "$OUT/dictionary"
fi

# --- 7. Check (and drop eap if its certificates are missing) ----------------------
disable_eap() {
    rm -f "$OUT/mods-enabled/eap" "$OUT/sites-enabled/inner-tunnel"
    # The default site calls eap in authorize/authenticate/post-auth/post-proxy;
    # a leading '-' makes FreeRADIUS skip a module that is not loaded.
    sed -E -i 's/^([[:space:]]*)eap([[:space:]]*(\{.*)?)$/\1-eap\2/' "$OUT/sites-enabled/default"
}
if [ "$CHECK" = yes ]; then
    radiusd="$(command -v freeradius || command -v radiusd || true)"
    [ -n "$radiusd" ] || die "freeradius binary not found (set RADIUS_CHECK=no to skip the check)"
    if ! "$radiusd" -C -d "$OUT" >/dev/null 2>&1; then
        if [ -e "$OUT/mods-enabled/eap" ]; then
            echo "configure.sh: configuration check failed with eap enabled; disabling eap and inner-tunnel" >&2
            disable_eap
        fi
        if ! out="$("$radiusd" -C -X -d "$OUT" 2>&1)"; then
            echo "$out" | tail -n 30 >&2
            die "freeradius -C -d $OUT failed"
        fi
    fi
fi
echo "FreeRADIUS configuration written to $OUT (auth $LISTEN_ADDR:$AUTH_PORT, acct $LISTEN_ADDR:$ACCT_PORT, db $DB_USER@$DB_HOST:$DB_PORT/$DB_NAME)"
