#!/usr/bin/env bash
# Starts or stops a throwaway distribution registry (Debian's docker-registry) on 127.0.0.1,
# plain HTTP, storage and pid file in DIR, delete enabled (tests remove tags between runs).
#   ci/registry.sh start PORT DIR   -> returns once http://127.0.0.1:PORT/v2/ answers
#   ci/registry.sh stop  PORT DIR   -> kills the pid recorded in DIR/registry.pid
# Can also be sourced: then call registry_start / registry_stop with the same arguments.
set -euo pipefail

registry_start() {
  local port=${1:?PORT} dir=${2:?DIR}
  mkdir -p "$dir/data"
  dir=$(cd "$dir" && pwd)
  if [ -f "$dir/registry.pid" ] && kill -0 "$(cat "$dir/registry.pid")" 2>/dev/null; then
    echo "registry.sh: already running (pid $(cat "$dir/registry.pid"))" >&2
  else
    command -v docker-registry >/dev/null || { echo "registry.sh: docker-registry not on PATH (run ci/install-peers.sh)" >&2; return 1; }
    cat > "$dir/config.yml" <<EOF
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $dir/data}
  delete: {enabled: true}
http: {addr: 127.0.0.1:$port}
EOF
    # setsid: the registry must outlive the calling shell's job control but not be tied to its tty.
    setsid docker-registry serve "$dir/config.yml" > "$dir/registry.log" 2>&1 < /dev/null &
    echo $! > "$dir/registry.pid"
  fi
  local _
  for _ in $(seq 100); do
    if curl -fs "http://127.0.0.1:$port/v2/" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$(cat "$dir/registry.pid")" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "registry.sh: registry on 127.0.0.1:$port did not come up; log:" >&2
  cat "$dir/registry.log" >&2 || true
  registry_stop "$port" "$dir" || true
  return 1
}

registry_stop() {
  local dir=${2:?DIR} pid
  [ -f "$dir/registry.pid" ] || return 0
  pid=$(cat "$dir/registry.pid")
  if kill "$pid" 2>/dev/null; then
    local _
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/registry.pid"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  case "${1:-}" in
    start) shift; registry_start "$@" ;;
    stop)  shift; registry_stop "$@" ;;
    *) echo "usage: $0 start|stop PORT DIR" >&2; exit 2 ;;
  esac
fi
