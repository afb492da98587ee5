#!/usr/bin/env bash
# Generate the Ruby stubs from proto/ with Debian's grpc-tools (ruby-grpc, ruby-grpc-tools) into build/,
# regenerated every time and never committed. Run: ruby -I clients/ruby/build clients/ruby/example.rb ADDR
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
rm -rf "$here/build"
mkdir -p "$here/build"
grpc_tools_ruby_protoc -I "$here/../../proto" --ruby_out="$here/build" --grpc_out="$here/build" "$here/../../proto/searchsvc/v1/searchsvc.proto"
ruby -I "$here/build" -c "$here/example.rb" >/dev/null
echo "generated $here/build"
