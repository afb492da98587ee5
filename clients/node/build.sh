#!/usr/bin/env bash
# Install the locked npm packages (first run), generate TypeScript stubs from proto/ with ts-proto (through
# Debian's protoc) and compile the example: clients/node/dist/example.js. src/gen/ and dist/ are regenerated
# every time and never committed.
set -euo pipefail
cd "$(dirname "$0")"
# `npm install` with the committed lockfile installs exactly its versions. Not `npm ci`: it insists on lockfile
# entries for buf's binaries for every platform, and the npm mirror here has only the Linux ones.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
  npm install --no-audit --no-fund --loglevel=error
fi
rm -rf src/gen dist
mkdir -p src/gen
npm run -s generate
npm run -s build
echo "built $(pwd)/dist/example.js"
