#!/usr/bin/env bash
# Run a private, throw-away RabbitMQ node with a TLS listener for integration
# tests, next to (and without touching) the machine's main node
# rabbit@localhost (5672, /etc/rabbitmq/*).
#
# Usage:
#   rabbitmq-tls-node.sh start DIR      generate certs, start node, print
#                                       node=..., tls_port=..., amqp_port=...
#                                       (also written to DIR/node.env)
#   rabbitmq-tls-node.sh stop DIR       stop that node, wait until it is gone
#                                       (idempotent; safe if never started)
#   rabbitmq-tls-node.sh ctl DIR ARGS   run `rabbitmqctl -n NODE ARGS` against
#                                       the private node (right HOME/cookie)
#
# Files written into DIR:
#   ca.pem ca.key                 test CA (ECDSA P-256, CA:TRUE)
#   server.pem server.key         leaf, SAN DNS:localhost + IP:127.0.0.1, serverAuth
#   client.pem client.key         leaf, CN=fepd-test-client, clientAuth, key PKCS#8
#   other-ca.pem other-ca.key     unrelated second CA
#   other-server.pem other-server.key   leaf signed by other-ca (same SANs)
#   node.env                      node=/tls_port=/amqp_port= lines
#   node.state                    internal bookkeeping (dist port, pids)
#   rabbitmq.conf rabbitmq-env.conf enabled_plugins .erlang.cookie
#   mnesia/ log/                  node data and logs (log/<node>.log,
#                                 log/launcher.out, log/launcher.err)
#
# The TLS listener REQUIRES a client certificate signed by ca.pem
# (verify_peer + fail_if_no_peer_cert). The plain AMQP listener (amqp_port,
# 127.0.0.1 only) accepts guest/guest. SASL mechanisms: PLAIN, AMQPLAIN,
# EXTERNAL (user name = client certificate CN; user "fepd-test-client" exists
# with no password and full permissions on vhost "/").
#
# Environment knobs:
#   RABBITMQ_TLS_NODE_TIMEOUT   seconds to wait for start/stop (default 60)
#   RABBITMQ_TLS_NODE_TLS_VERSIONS  e.g. "tlsv1.2" to pin the TLS versions
#                               (default: Erlang/RabbitMQ default, i.e. 1.3+1.2).
#                               With TLS 1.3 a missing/untrusted client cert is
#                               reported by the server AFTER the client-side
#                               handshake completed (alert 116 certificate_required
#                               / 48 unknown_ca on the first read); with TLS 1.2
#                               the handshake itself fails.
set -euo pipefail

RMQ_BIN=/usr/lib/rabbitmq/bin          # the real scripts, not the su wrapper in /usr/sbin
CLIENT_CN=fepd-test-client
TIMEOUT=${RABBITMQ_TLS_NODE_TIMEOUT:-60}
SYS_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Resolve the real interpreter once (pyenv shims cost ~0.2-0.5 s per call).
PY=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null) || PY=
[ -x "$PY" ] || PY=python3

die() { echo "rabbitmq-tls-node: $*" >&2; exit 1; }
log() { echo "rabbitmq-tls-node: $*" >&2; }

abs_dir() {
    mkdir -p "$1"
    (cd "$1" && pwd -P)
}

# Read key=value from a file (no sourcing).
kv() { sed -n "s/^$2=//p" "$1" 2>/dev/null | tail -n 1; }

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# Is PID one of the processes this script launched for NODE? (guards against
# PID reuse when DIR/node.state is stale). The launcher and beam.smp inherit
# RABBITMQ_NODENAME=NODE from launch_node's environment.
ours() { # pid node
    alive "$1" && { tr '\0' '\n' <"/proc/$1/environ"; } 2>/dev/null | grep -qxF "RABBITMQ_NODENAME=$2"
}

# PIDs of the processes in process group PG that belong to NODE.
group_members() { # pg node
    local p
    for p in $(ps -eo pid=,pgid= | awk -v g="$1" '$2 == g { print $1 }'); do
        ours "$p" "$2" && echo "$p"
    done
    return 0
}

# Run a RabbitMQ CLI tool against the private node, with a clean environment:
# HOME=DIR so that $HOME/.erlang.cookie is the private node's cookie, and our
# own conf-env file so /etc/rabbitmq/rabbitmq-env.conf (NODENAME=rabbit@...)
# is never read.
cli() {
    local dir=$1 tool=$2 node=$3
    shift 3
    timeout "$((TIMEOUT + 15))" \
        env -i PATH="$SYS_PATH" HOME="$dir" LANG=C.UTF-8 LC_ALL=C.UTF-8 \
        RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" \
        "$RMQ_BIN/$tool" -n "$node" "$@"
}

# ---------------------------------------------------------------- certs ----

write_openssl_cnf() {
    cat >"$1/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[v3_client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
}

gen_key() { # PKCS#8 PEM ("BEGIN PRIVATE KEY"), ECDSA P-256
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
    chmod 600 "$1"
}

serial() { echo "0x$(openssl rand -hex 8)"; }

gen_ca() { # dir name cn
    local d=$1 n=$2 cn=$3
    gen_key "$d/$n.key"
    openssl req -config "$d/openssl.cnf" -new -x509 -sha256 -days 3650 \
        -key "$d/$n.key" -subj "/O=fepd tests/CN=$cn" -set_serial "$(serial)" \
        -extensions v3_ca -out "$d/$n.pem"
}

gen_leaf() { # dir name ca cn extensions
    local d=$1 n=$2 ca=$3 cn=$4 ext=$5
    gen_key "$d/$n.key"
    openssl req -config "$d/openssl.cnf" -new -sha256 -key "$d/$n.key" \
        -subj "/O=fepd tests/CN=$cn" -out "$d/$n.csr"
    openssl x509 -req -sha256 -days 825 -in "$d/$n.csr" \
        -CA "$d/$ca.pem" -CAkey "$d/$ca.key" -set_serial "$(serial)" \
        -extfile "$d/openssl.cnf" -extensions "$ext" -out "$d/$n.pem" 2>/dev/null
    rm -f "$d/$n.csr"
}

gen_certs() {
    local d=$1
    write_openssl_cnf "$d"
    gen_ca "$d" ca "fepd-test-ca"
    gen_leaf "$d" server ca localhost v3_server
    gen_leaf "$d" client ca "$CLIENT_CN" v3_client
    gen_ca "$d" other-ca "fepd-test-other-ca"
    gen_leaf "$d" other-server other-ca localhost v3_server
    # sanity: chains verify with the intended purpose
    openssl verify -CAfile "$d/ca.pem" -purpose sslserver "$d/server.pem" >/dev/null
    openssl verify -CAfile "$d/ca.pem" -purpose sslclient "$d/client.pem" >/dev/null
    openssl verify -CAfile "$d/other-ca.pem" -purpose sslserver "$d/other-server.pem" >/dev/null
}

# ---------------------------------------------------------------- ports ----

# Three distinct free ports on 127.0.0.1 (sockets held open until all are
# picked). Avoid the well-known RabbitMQ ports and the CLI tools' distribution
# range 35672-35682 (rabbitmqctl of any node binds there).
pick_ports() {
    "$PY" - <<'EOF'
import socket
held, ports = [], []
while len(ports) < 3:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    held.append(s)
    p = s.getsockname()[1]
    if 35672 <= p <= 35682 or p in (4369, 5671, 5672, 15672, 25672):
        continue
    ports.append(p)
print(*ports)
for s in held:
    s.close()
EOF
}

# --------------------------------------------------------------- config ----

write_node_config() { # dir node amqp tls dist
    local d=$1 node=$2 amqp=$3 tls=$4 dist=$5
    # Replaces /etc/rabbitmq/rabbitmq-env.conf for this node and for our CLI
    # calls (that file sets NODENAME=rabbit@localhost). Sourced by sh.
    cat >"$d/rabbitmq-env.conf" <<EOF
NODENAME=$node
ERL_EPMD_ADDRESS=127.0.0.1
export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOF
    cat >"$d/rabbitmq.conf" <<EOF
listeners.tcp.local = 127.0.0.1:$amqp
listeners.ssl.local = 127.0.0.1:$tls
ssl_options.cacertfile = $d/ca.pem
ssl_options.certfile = $d/server.pem
ssl_options.keyfile = $d/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
auth_mechanisms.1 = PLAIN
auth_mechanisms.2 = AMQPLAIN
auth_mechanisms.3 = EXTERNAL
ssl_cert_login_from = common_name
loopback_users = none
log.file.level = info
log.console = false
EOF
    local v i=1
    for v in ${RABBITMQ_TLS_NODE_TLS_VERSIONS:-}; do
        echo "ssl_options.versions.$i = $v" >>"$d/rabbitmq.conf"
        i=$((i + 1))
    done
    # Own plugins file: only the EXTERNAL mechanism (no management -> no 15672 clash).
    echo '[rabbitmq_auth_mechanism_ssl].' >"$d/enabled_plugins"
    # Private cookie, found by node and CLI through HOME=$d.
    rm -f "$d/.erlang.cookie"
    (umask 077; openssl rand -hex 20 | tr a-f A-F | tr -d '\n' >"$d/.erlang.cookie")
    chmod 400 "$d/.erlang.cookie"
}

launch_node() { # dir node amqp dist ; echoes launcher pid
    local d=$1 node=$2 amqp=$3 dist=$4
    mkdir -p "$d/mnesia" "$d/log"
    # setsid: own session/process group, detached from the caller's terminal
    # and pipes, so `Command::output()` in a test returns as soon as we exit.
    cd "$d"    # (we run in a $(...) subshell) any stray file lands in DIR
    setsid env -i PATH="$SYS_PATH" HOME="$d" LANG=C.UTF-8 LC_ALL=C.UTF-8 \
        ERL_CRASH_DUMP="$d/log/erl_crash.dump" \
        RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf" \
        RABBITMQ_NODENAME="$node" \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$amqp" \
        RABBITMQ_DIST_PORT="$dist" \
        RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" \
        RABBITMQ_CONFIG_FILES="$d/conf.d/*.conf" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
        RABBITMQ_MNESIA_BASE="$d/mnesia" \
        RABBITMQ_LOG_BASE="$d/log" \
        RABBITMQ_PID_FILE="$d/rabbit.pid" \
        "$RMQ_BIN/rabbitmq-server" \
        </dev/null >"$d/log/launcher.out" 2>"$d/log/launcher.err" &
    local pid=$! i
    # Until setsid/env have exec'd, /proc/PID/environ is still ours (no
    # RABBITMQ_NODENAME): wait for that, so later `ours` checks are meaningful.
    for ((i = 0; i < 100; i++)); do
        ours "$pid" "$node" && break
        alive "$pid" || break
        sleep 0.05
    done
    echo "$pid"
}

# Ready = TLS handshake with client.pem succeeds AND the server then answers
# the AMQP 0-9-1 protocol header with a frame (connection.start). Reading is
# essential: with TLS 1.3 the server validates the client certificate only
# after the client considers the handshake done, so a bare handshake (e.g.
# `openssl s_client </dev/null`) "succeeds" even without a client cert.
tls_ready() { # dir port
    timeout 10 "$PY" - "$1" "$2" <<'EOF' >/dev/null 2>&1
import socket, ssl, sys
d, port = sys.argv[1], int(sys.argv[2])
ctx = ssl.create_default_context(cafile=d + "/ca.pem")
ctx.load_cert_chain(d + "/client.pem", d + "/client.key")
with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"AMQP\x00\x00\x09\x01")
        frame = s.recv(7)
        sys.exit(0 if len(frame) == 7 and frame[0] == 1 else 1)
EOF
}

dump_logs() {
    local d=$1 f
    for f in "$d/log/launcher.err" "$d/log/launcher.out" "$d"/log/*@*.log; do
        [ "${f%_upgrade.log}" = "$f" ] || continue
        [ -s "$f" ] || continue
        echo "---- $f: errors (first 30) ----" >&2
        grep -E '\[(error|critical|alert|emergency)\]|[Cc]rash|Slogan' "$f" | head -n 30 | cut -c1-400 >&2 || true
        echo "---- $f: tail ----" >&2
        tail -n 15 "$f" | cut -c1-400 >&2
    done
}

kill_group() { # pgid node ; TERM then KILL the node's own process group
    local pg=$1 node=$2 i
    [ -n "$pg" ] && [ -n "$(group_members "$pg" "$node")" ] || return 0
    kill -TERM -- "-$pg" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        [ -n "$(group_members "$pg" "$node")" ] || return 0
        sleep 0.1
    done
    kill -KILL -- "-$pg" 2>/dev/null || true
}

# ------------------------------------------------------------ commands ----

cmd_start() {
    local d node amqp tls dist launcher attempt deadline rc
    d=$(abs_dir "$1")
    if [ -f "$d/node.state" ] &&
        ours "$(kv "$d/node.state" launcher_pid)" "$(kv "$d/node.state" node)"; then
        die "a node from $d is still running; stop it first"
    fi
    rm -f "$d/node.env" "$d/node.state" "$d/rabbit.pid"
    local t0=$SECONDS
    gen_certs "$d"

    node="fepdtls-$$-$RANDOM@localhost"
    for attempt in 1 2 3; do
        read -r amqp tls dist < <(pick_ports)
        write_node_config "$d" "$node" "$amqp" "$tls" "$dist"
        rm -rf "$d/mnesia" "$d/log"
        launcher=$(launch_node "$d" "$node" "$amqp" "$dist")
        printf 'node=%s\nlauncher_pid=%s\ndist_port=%s\ntls_port=%s\namqp_port=%s\n' \
            "$node" "$launcher" "$dist" "$tls" "$amqp" >"$d/node.state"

        # Wait for the TLS listener (it opens near the end of boot).
        deadline=$((SECONDS + TIMEOUT))
        rc=1
        while ((SECONDS < deadline)); do
            if ! ours "$launcher" "$node"; then rc=2; break; fi
            if tls_ready "$d" "$tls"; then rc=0; break; fi
            sleep 0.2
        done
        [ $rc -eq 0 ] && break
        if [ $rc -eq 2 ] && grep -qs eaddrinuse "$d"/log/*; then
            log "port clash on attempt $attempt, retrying with new ports"
            kill_group "$launcher" "$node"
            continue
        fi
        [ $rc -eq 2 ] && log "node $node exited during boot" \
                      || log "TLS listener on $tls not ready after ${TIMEOUT}s"
        dump_logs "$d"
        kill_group "$launcher" "$node"
        exit 1
    done
    [ $rc -eq 0 ] || { dump_logs "$d"; die "could not start node after 3 attempts"; }

    # Full boot + proof that the CLI can reach the node (cookie/HOME right).
    if ! cli "$d" rabbitmqctl "$node" -q await_startup --timeout "$TIMEOUT" >/dev/null 2>"$d/log/cli.err"; then
        cat "$d/log/cli.err" >&2; dump_logs "$d"; kill_group "$launcher" "$node"
        die "rabbitmqctl cannot confirm startup of $node"
    fi
    echo "beam_pid=$(cat "$d/rabbit.pid" 2>/dev/null)" >>"$d/node.state"

    # User for EXTERNAL (name = client cert CN), no usable password.
    {
        cli "$d" rabbitmqctl "$node" -q add_user "$CLIENT_CN" "$(openssl rand -hex 16)" &&
        cli "$d" rabbitmqctl "$node" -q clear_password "$CLIENT_CN" &&
        cli "$d" rabbitmqctl "$node" -q set_permissions -p / "$CLIENT_CN" '.*' '.*' '.*'
    } >/dev/null 2>>"$d/log/cli.err" || {
        cat "$d/log/cli.err" >&2; kill_group "$launcher" "$node"
        die "could not create user $CLIENT_CN"
    }

    printf 'node=%s\ntls_port=%s\namqp_port=%s\n' "$node" "$tls" "$amqp" >"$d/node.env"
    cat "$d/node.env"
    log "started $node in $((SECONDS - t0))s (tls=$tls amqp=$amqp dist=$dist)"
}

cmd_stop() {
    local d node launcher beam i
    [ -d "$1" ] || return 0
    d=$(abs_dir "$1")
    [ -f "$d/node.state" ] || return 0
    node=$(kv "$d/node.state" node)
    launcher=$(kv "$d/node.state" launcher_pid)
    beam=$(kv "$d/node.state" beam_pid)
    [ -n "$beam" ] || beam=$(cat "$d/rabbit.pid" 2>/dev/null || true)

    ours "$launcher" "$node" || launcher=
    ours "$beam" "$node" || beam=
    if [ -n "$launcher$beam" ]; then
        # Graceful stop via the CLI; we wait for the processes ourselves
        # (`stop PIDFILE` would block on the pid even when the RPC failed).
        if ! cli "$d" rabbitmqctl "$node" -q stop >/dev/null 2>&1; then
            log "rabbitmqctl stop failed for $node, sending SIGTERM"
            if ours "$beam" "$node"; then kill -TERM "$beam" 2>/dev/null || true; fi
        fi
        for ((i = 0; i < TIMEOUT * 10; i++)); do
            ours "$beam" "$node" || ours "$launcher" "$node" || break
            sleep 0.1
        done
    fi
    # Whatever is left in the node's private process group: TERM, then KILL.
    # (erl_child_setup runs in its own session and exits with beam.smp.)
    [ -z "$launcher" ] || kill_group "$launcher" "$node"
    if ours "$beam" "$node"; then kill -KILL "$beam" 2>/dev/null || true; fi
    rm -f "$d/node.state"
}

cmd_ctl() {
    local d node
    d=$(abs_dir "$1"); shift
    node=$(kv "$d/node.state" node)
    [ -n "$node" ] || die "no node state in $d"
    cli "$d" rabbitmqctl "$node" "$@"
}

case "${1:-}" in
    start) [ $# -eq 2 ] || die "usage: $0 start DIR"; cmd_start "$2" ;;
    stop)  [ $# -eq 2 ] || die "usage: $0 stop DIR"; cmd_stop "$2" ;;
    ctl)   [ $# -ge 2 ] || die "usage: $0 ctl DIR ARGS..."; d=$2; shift 2; cmd_ctl "$d" "$@" ;;
    *) die "usage: $0 {start|stop|ctl} DIR [ARGS...]" ;;
esac
