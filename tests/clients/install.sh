#!/usr/bin/env bash
# Installs the pinned npm client libraries for the scripts in tests/clients/*/client.mjs.
#
#   tests/clients/install.sh            # every client project
#   tests/clients/install.sh amplify    # only the named ones
#
# Runs `npm ci` (exact versions from each package-lock.json, no install scripts) in each project,
# and skips a project whose node_modules was installed from the same package.json +
# package-lock.json by the same Node major (a stamp file in node_modules records that), so a
# second run costs well under a second. Needs node >= 20 and npm on PATH, and the npm registry.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
projects=("$@")
[ ${#projects[@]} -gt 0 ] || projects=(apollo3 apollo4 amplify graphql-ws)

command -v node >/dev/null || { echo "install.sh: node not found" >&2; exit 1; }
command -v npm >/dev/null || { echo "install.sh: npm not found" >&2; exit 1; }
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  echo "install.sh: node $(node --version) is too old, need >= 20" >&2
  exit 1
fi

for p in "${projects[@]}"; do
  dir="$here/$p"
  [ -f "$dir/package-lock.json" ] || { echo "install.sh: no such client project: $p" >&2; exit 1; }
  stamp="$dir/node_modules/.tether-install-stamp"
  want="$(cat "$dir/package.json" "$dir/package-lock.json" | sha256sum | cut -d' ' -f1) node$node_major"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "install.sh: $p up to date" >&2
    continue
  fi
  echo "install.sh: npm ci in $p" >&2
  start=$(date +%s)
  (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --prefer-offline --loglevel=error >&2)
  echo "$want" > "$stamp"
  echo "install.sh: $p installed in $(( $(date +%s) - start ))s" >&2
done
