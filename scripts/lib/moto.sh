# The SQS emulator for tests and benchmarks (sourced by scripts/test and scripts/bench):
# moto[server], pinned, in a virtual environment under target/moto-venv (installed once), run
# on a free loopback port. moto_start sets SQS_URL and MOTO_BIN (tests that restart the emulator
# start their own with it); moto_stop stops it. moto accepts any credentials; the AWS SDK still
# needs some, so dummy ones are exported.

MOTO_SPEC='moto[server]==5.2.5'
MOTO_VENV=${MOTO_VENV:-target/moto-venv}
MOTO_PID=""

moto_install() {
  if [ -x "$MOTO_VENV/bin/moto_server" ] && [ "$(cat "$MOTO_VENV/.spec" 2>/dev/null)" = "$MOTO_SPEC" ]; then
    return
  fi
  echo "moto.sh: installing $MOTO_SPEC into $MOTO_VENV…" >&2
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    echo "moto.sh: installing python3-venv (apt)…" >&2
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
  fi
  rm -rf "$MOTO_VENV"
  python3 -m venv "$MOTO_VENV"
  "$MOTO_VENV/bin/pip" install -q --disable-pip-version-check "$MOTO_SPEC" >&2
  echo "$MOTO_SPEC" > "$MOTO_VENV/.spec"
}

moto_start() {
  moto_install
  MOTO_BIN=$(cd "$MOTO_VENV/bin" && pwd)/moto_server
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$MOTO_BIN" -H 127.0.0.1 -p "$port" >"${MOTO_LOG:-target/moto.log}" 2>&1 &
  MOTO_PID=$!
  SQS_URL="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen('$SQS_URL/moto-api/', timeout=1)" 2>/dev/null; then
      break
    fi
    sleep 0.1
  done
  export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-test} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-test}
  export AWS_REGION=${AWS_REGION:-us-east-1}
}

moto_stop() {
  if [ -n "$MOTO_PID" ]; then
    kill "$MOTO_PID" 2>/dev/null || true
    wait "$MOTO_PID" 2>/dev/null || true
    MOTO_PID=""
  fi
}
