#!/usr/bin/env bash
# Generate the Go stubs from proto/ and build the example, offline, with Debian's toolchain (protobuf-compiler,
# protoc-gen-go, protoc-gen-go-grpc, golang-google-grpc-dev, golang-google-protobuf-dev): no module proxy is
# reachable, so this builds in GOPATH mode against the Go sources those -dev packages install.
# Output: clients/go/build/bin/example (build/ is regenerated every time and never committed).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="$here/build"
rm -rf "$build"
mkdir -p "$build/src" "$build/bin"
# go_package in the proto decides the import path, so the stubs land under build/src/<that path>.
protoc -I "$root/proto" --go_out="$build/src" --go-grpc_out="$build/src" "$root/proto/searchsvc/v1/searchsvc.proto"
cd "$here/example"
GO111MODULE=off GOPATH="$build:/usr/share/gocode" GOFLAGS= go build -o "$build/bin/example" .
echo "built $build/bin/example"
