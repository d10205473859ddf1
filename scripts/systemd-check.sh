#!/usr/bin/env bash
# Install the systemd unit on a fresh Debian 12 (bookworm) root booted with `systemd-nspawn --boot`
# (the host's network shared) by running the install steps of docs/deploying.md as written there, only
# their URL swapped for a loopback source served inside the container. Then see /healthz answer "ok",
# the output written, the sandbox in force, two sources (threads) and a local Dask cluster work under
# it, a bad setting stop it for good, and print `systemd-analyze security`'s rating. A clean clone of
# this checkout (committed files only) goes in as /opt/prefectflow. Every wait is bounded; any failure
# ends in one line on stderr and exit 1.
# Usage, as root:  scripts/systemd-check.sh    (the unit listens on 127.0.0.1:9100: it must be free)
#    or, as anyone: scripts/systemd-check.sh --print-steps    (the steps it would run, from the doc)
set -euo pipefail
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
repo=$(cd "$(dirname "$0")/.." && pwd)
doc=docs/deploying.md
default_url=https://jsonplaceholder.cypress.io/todos   # the URL in the doc's steps, swapped here
listen=127.0.0.1:9100
records=200   # in sample/todos.json
started=$SECONDS

fail() { echo "$0: $*" >&2; exit 1; }
# The steps: the first ```sh block after the comment that names this script.
steps_of() {
    awk '/^<!--.*scripts\/systemd-check\.sh/ { marked = 1; next }
         marked && /^```sh$/ { inside = 1; next }
         inside && /^```$/ { exit }
         inside { print }' "$1"
}
if [ "${1:-}" = --print-steps ]; then steps_of "$repo/$doc"; exit; fi
[ $# = 0 ] || fail "usage: $0 [--print-steps]"
[ "$(id -u)" = 0 ] || fail "needs root (debootstrap, systemd-nspawn)"
for tool in debootstrap systemd-nspawn nsenter pgrep; do
    command -v "$tool" >/dev/null || fail "needs $tool (apt-get install debootstrap systemd-container util-linux procps)"
done
if (exec 3<>"/dev/tcp/${listen%:*}/${listen#*:}") 2>/dev/null; then
    fail "$listen is in use on this machine, and the unit listens there (the container shares the network)"
fi

work=$(mktemp -d "${TMPDIR:-/var/tmp}/systemd-check.XXXXXX")
root=$work/root
nspawn= child=
cleanup() {
    [ -z "$child" ] || kill -KILL -- "-$child" 2>/dev/null || true   # all it made is thrown away
    if [ -n "$nspawn" ] && kill -TERM "$nspawn" 2>/dev/null; then   # the container's systemd powers off
        for _ in $(seq 120); do kill -0 "$nspawn" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$nspawn" 2>/dev/null || true
    fi
    # What debootstrap mounted, if it was stopped half-way, deepest first.
    awk -v w="$work/" 'index($2, w) == 1 {print $2}' /proc/self/mounts | sort -r | xargs -r -n1 umount -l || true
    rm -rf --one-file-system "$work" || echo "$0: could not remove $work" >&2
}
# run COMMAND...: in a process group of its own, killed whole if this script stops half-way; waiting
# on it, unlike on a command in the foreground, lets a signal stop this script at once.
run() {
    setsid "$@" & child=$!
    local status=0; wait "$child" || status=$?
    child=; return "$status"
}
trap cleanup EXIT
exec 9>&2   # the traps say why they stop on this, even while a command's stderr goes to a log
trap 'echo "$0: stopped by SIGINT" >&9; exit 130' INT
trap 'echo "$0: stopped by SIGTERM" >&9; exit 143' TERM

git clone -q "$repo" "$work/src"
steps=$(steps_of "$work/src/$doc")
[ -n "$steps" ] || fail "$doc has no install steps: a \`\`\`sh block after a comment naming scripts/systemd-check.sh"
grep -qF "$default_url" <<<"$steps" || fail "the install steps in $doc do not set the URL $default_url"

echo "debootstrap $suite (minbase with systemd) in $root"
run timeout 1200 debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,ca-certificates,python3 \
    "$suite" "$root" "$mirror" >/dev/null 2>&1 \
    || { tail -20 "$root/debootstrap/debootstrap.log" >&2 || true; fail "debootstrap $suite failed"; }
# The network may re-sign TLS: the root trusts the host's local CA certificates.
if [ -d /usr/local/share/ca-certificates ]; then
    cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi
mv "$work/src" "$root/opt/prefectflow"
# The loopback source: the bundled sample at /todos on a free port, written down once it listens.
cat >"$root/root/source.py" <<'EOF'
import http.server, os
body = open("/opt/prefectflow/sample/todos.json", "rb").read()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/todos" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open("/root/source.port.tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.replace("/root/source.port.tmp", "/root/source.port")
server.serve_forever()
EOF

echo "booting it: systemd-nspawn --boot --directory=$root"
systemd-nspawn --quiet --boot --register=no --keep-unit --console=passive \
    --machine="$(basename "$work" | tr -c 'a-zA-Z0-9\n' -)" --directory="$root" \
    </dev/null >"$work/console.log" 2>&1 &
nspawn=$!
leader=   # the container's systemd: nspawn's child, PID 1 of its own pid namespace
for _ in $(seq 120); do
    pid=$(pgrep -P "$nspawn" | head -1 || true)
    if [ -n "$pid" ] && [ "$(awk '/^NSpid:/ {print $NF}' "/proc/$pid/status" 2>/dev/null)" = 1 ]; then
        leader=$pid; break
    fi
    kill -0 "$nspawn" 2>/dev/null || { cat "$work/console.log" >&2; fail "systemd-nspawn exited while booting"; }
    sleep 0.5
done
[ -n "$leader" ] || fail "the container's systemd did not start within 60 s"

# inside SCRIPT: bash -c SCRIPT in the container, in /root, as root with a login's clean environment.
bash_inside=(nsenter --target "$leader" --all --root --wd /usr/bin/env -i
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
    DEBIAN_FRONTEND=noninteractive bash -euo pipefail -c)
inside() { run "${bash_inside[@]}" "cd /root; $1"; }
booted=$(inside 'for _ in $(seq 240); do   # until systemd answers on its socket, then until it booted
    state=$(timeout 120 systemctl is-system-running --wait 2>/dev/null || true)
    [ -n "$state" ] && [ "$state" != offline ] && break; sleep 0.5; done; echo "$state"' || true)
[ "$booted" = running ] || { inside 'systemctl --failed --no-pager' >&2 || true; fail "the container booted '$booted', not 'running'"; }
inside 'update-ca-certificates >/dev/null 2>&1'
inside 'systemd-run --quiet --unit=loopback-source python3 /root/source.py
        for _ in $(seq 100); do [ -e source.port ] && exit; sleep 0.2; done; exit 1' \
    || fail "the loopback source did not start"
url="http://127.0.0.1:$(cat "$root/root/source.port")/todos"

echo "running the install steps of $doc, with $url"
printf '%s\n' "${steps//"$default_url"/$url}" >"$root/root/install-steps.sh"
if ! inside 'timeout 1800 bash -euxo pipefail install-steps.sh </dev/null' >"$work/steps.log" 2>&1; then
    tail -30 "$work/steps.log" >&2
    fail "the install steps of $doc failed (their log's end is above)"
fi

# wait_for_run OUTPUT RECORDS: the service's first run has written RECORDS records to OUTPUT and
# /healthz says "ok"; within 120 s, while the service is up.
wait_for_run() {
    inside '
        for _ in $(seq 240); do
            health=$(curl -fsS http://'"$listen"'/healthz 2>/dev/null || true)
            if grep -q "\"status\": \"ok\"" <<<"$health" && [ -e '"$1"' ]; then
                records=$(python3 -c "import json, sys; print(len(json.load(open(sys.argv[1]))))" '"$1"')
                [ "$records" = '"$2"' ] || { echo "'"$1"' holds $records records, not '"$2"'"; exit 1; }
                echo "/healthz: ok; '"$1"': $records records, $(stat -c "%U, mode %a" '"$1"')"
                exit
            fi
            systemctl is-active --quiet prefectflow || break
            sleep 0.5
        done
        echo "/healthz: ${health:-no answer}"; exit 1' && return
    inside 'systemctl status --no-pager prefectflow | head -5; journalctl -u prefectflow --no-pager | tail -20' >&2 || true
    fail "the service did not write $1 and answer /healthz \"ok\" within 120 s"
}
wait_for_run /opt/prefectflow/data/datos.json "$records"
inside '
    [ "$(stat -c "%U %a" /opt/prefectflow/data/datos.json)" = "prefectflow 600" ] || exit 1
    status=/proc/$(systemctl show -P MainPID prefectflow)/status
    grep -E "^(Uid|NoNewPrivs|Seccomp|CapEff):" "$status" | tr -s "\t\n" "  "; echo
    grep -qE "^NoNewPrivs:\s+1$" "$status" && grep -qE "^Seccomp:\s+2$" "$status" && grep -qE "^CapEff:\s+0+$" "$status"' \
    || fail "the service runs outside its sandbox, or its output is not prefectflow's, mode 600"

# The settings file, edited as the doc says: two sources (the threads executor), then a local Dask
# cluster, each a restart whose first run must succeed; then a bad URL, bad usage: exit 2, for good.
inside 'sed -i "s|^url = .*|url = [\"'"$url"'\", \"'"$url"'\"]|" /etc/prefectflow.toml
    systemctl restart prefectflow'
wait_for_run /opt/prefectflow/data/datos.json $((2 * records))
inside 'echo "executor = \"dask\"" >>/etc/prefectflow.toml && systemctl restart prefectflow'
wait_for_run /opt/prefectflow/data/datos.json $((2 * records))
inside 'journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID=$(systemctl show -P InvocationID prefectflow) \
    | grep -q "LocalCluster"' || fail "executor = \"dask\" did not start a local Dask cluster"
inside 'sed -i "s|^url = .*|url = [\"ftp://127.0.0.1/todos\"]|" /etc/prefectflow.toml
    systemctl restart prefectflow
    for _ in $(seq 120); do systemctl is-failed --quiet prefectflow && break; sleep 0.5; done
    status=$(systemctl show -P ExecMainStatus prefectflow) restarts=$(systemctl show -P NRestarts prefectflow)
    [ "$status $restarts" = "2 0" ] || { echo "exit status $status, $restarts restarts"; exit 1; }
    line=$(journalctl -u prefectflow --no-pager -o cat | grep -F "ftp://127.0.0.1/todos" | tail -1)
    [ -n "$line" ] && echo "a bad URL: exit 2, not restarted: $line"' \
    || fail "a bad URL in /etc/prefectflow.toml did not stop the service with exit 2 for good"

inside 'systemd-analyze security --no-pager prefectflow.service | tail -1' | sed 's/^→ //'
echo "$0: ok in $((SECONDS - started)) s"
