#!/usr/bin/env bash
# PostgreSQL servers of one's own, for the replica tests and benchmarks: a streaming replica
# of a running server, or a private primary. Each lives in a directory of its own and listens
# on 127.0.0.1 only (no Unix socket), so nothing else on the machine is touched.
#
#   scripts/replica.sh primary DIR PORT            a new primary (initdb) that allows
#                                                  replication connections from 127.0.0.1
#   scripts/replica.sh replica DIR PORT [PRIMARY]  a base backup of the server on port
#                                                  PRIMARY (default 5432), started as its
#                                                  hot standby (pg_basebackup -R)
#   scripts/replica.sh stop DIR [MODE]             pg_ctl stop (MODE: fast or immediate)
#   scripts/replica.sh start DIR                   start a stopped server again
#   scripts/replica.sh restart DIR [MODE]          pg_ctl restart
#   scripts/replica.sh delay DIR SETTING           recovery_min_apply_delay (e.g. 2s, 0)
#   scripts/replica.sh remove DIR                  stop (immediate) and delete DIR
#   scripts/replica.sh free-port                   print a free TCP port on 127.0.0.1
#
# The server tools are taken from $PGBIN, else the newest /usr/lib/postgresql/*/bin, else
# PATH. Run as root, the servers run as the postgres user (DIR is handed to it). A server
# the replica copies must allow replication connections from 127.0.0.1 (pg_hba.conf) and
# have wal_level replica or logical (the default).
set -euo pipefail

die() { echo "replica.sh: $*" >&2; exit 1; }

pgbin() {
    if [ -n "${PGBIN:-}" ]; then echo "$PGBIN"; return; fi
    local newest
    newest=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$newest" ]; then echo "$newest"; return; fi
    command -v pg_ctl >/dev/null 2>&1 || die "no PostgreSQL server tools (pg_ctl) found; set PGBIN"
    dirname "$(command -v pg_ctl)"
}

# Run a server tool as the user who owns the servers (from /, which that user can enter;
# every path given to the tools is absolute).
as_owner() {
    if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

own_dir() {
    mkdir -p "$1"
    chmod 700 "$1"
    if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$1"; fi
}

# Settings every server of ours gets: loopback only, no Unix socket (its name would be
# shared with other servers on the same port), small memory.
write_conf() {
    local dir=$1 port=$2
    as_owner tee -a "$dir/postgresql.conf" >/dev/null <<EOF
# Written by scripts/replica.sh
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
shared_buffers = 32MB
hot_standby = on
fsync = off
max_connections = 100
logging_collector = off
EOF
    as_owner tee "$dir/pg_hba.conf" >/dev/null <<EOF
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
EOF
}

start_server() {
    local dir=$1
    as_owner "$(pgbin)/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start >/dev/null \
        || { tail -n 20 "$dir/server.log" >&2 || true; die "the server in $dir did not start"; }
}

wait_ready() {
    local port=$1
    for _ in $(seq 1 120); do
        "$(pgbin)/pg_isready" -h 127.0.0.1 -p "$port" -q && return 0
        sleep 0.5
    done
    die "nothing answers on 127.0.0.1:$port"
}

cmd=${1:-}
case "$cmd" in
    primary)
        dir=$(realpath -m "${2:?DIR}"); port=${3:?PORT}
        [ -e "$dir/PG_VERSION" ] && die "$dir already holds a server"
        own_dir "$dir"
        as_owner "$(pgbin)/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --no-sync \
            >"$dir.initdb.log" 2>&1 || { cat "$dir.initdb.log" >&2; die "initdb failed"; }
        rm -f "$dir.initdb.log"
        write_conf "$dir" "$port"
        start_server "$dir"
        wait_ready "$port"
        ;;
    replica)
        dir=$(realpath -m "${2:?DIR}"); port=${3:?PORT}; primary=${4:-5432}
        [ -e "$dir/PG_VERSION" ] && die "$dir already holds a server"
        own_dir "$dir"
        # -c fast: checkpoint now rather than at the primary's next scheduled one.
        as_owner "$(pgbin)/pg_basebackup" -h 127.0.0.1 -p "$primary" -U postgres -D "$dir" \
            -R -X stream -c fast --no-sync \
            || die "pg_basebackup from 127.0.0.1:$primary failed (does its pg_hba.conf allow replication connections from 127.0.0.1?)"
        # A copy of a Debian cluster has no configuration files (they live in /etc); a
        # copy of one of ours has them, and ours are written again with the new port.
        as_owner rm -f "$dir/postmaster.pid" "$dir/postmaster.opts" "$dir/server.log"
        as_owner sed -i '/^# Written by scripts\/replica.sh$/,$d' "$dir/postgresql.conf" 2>/dev/null || true
        write_conf "$dir" "$port"
        start_server "$dir"
        wait_ready "$port"
        ;;
    stop)
        dir=$(realpath -m "${2:?DIR}"); mode=${3:-fast}
        if [ -e "$dir/postmaster.pid" ]; then
            as_owner "$(pgbin)/pg_ctl" -D "$dir" -m "$mode" -w -t 60 stop >/dev/null
        fi
        ;;
    start)
        dir=$(realpath -m "${2:?DIR}")
        start_server "$dir"
        ;;
    restart)
        dir=$(realpath -m "${2:?DIR}"); mode=${3:-fast}
        as_owner "$(pgbin)/pg_ctl" -D "$dir" -l "$dir/server.log" -m "$mode" -w -t 60 restart \
            >/dev/null
        ;;
    delay)
        dir=$(realpath -m "${2:?DIR}"); setting=${3:?SETTING}
        as_owner sed -i '/^recovery_min_apply_delay/d' "$dir/postgresql.conf"
        echo "recovery_min_apply_delay = '$setting'" | as_owner tee -a "$dir/postgresql.conf" >/dev/null
        as_owner "$(pgbin)/pg_ctl" -D "$dir" reload >/dev/null
        ;;
    remove)
        dir=$(realpath -m "${2:?DIR}")
        if [ -e "$dir/postmaster.pid" ]; then
            as_owner "$(pgbin)/pg_ctl" -D "$dir" -m immediate -w -t 60 stop >/dev/null || true
        fi
        rm -rf "$dir"
        ;;
    free-port)
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
        ;;
    *)
        sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
        exit 2
        ;;
esac
