"""What every command that talks to a server shares: its connection flags (target, API key, TLS, deadline), the
channel they open, and how a failed call is reported (its status, message and field violations, exit code 1,
never a traceback)."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Callable

from searchsvc.config import load_settings

EXIT_RPC_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def connection_options(args: argparse.Namespace) -> dict:
    """A client command's TLS and API key: its flags, else the config's `client` section (SEARCHSVC_CLIENT__*)."""
    client = load_settings(args.config).client
    return {
        "api_key": args.api_key or client.api_key,
        "tls": args.tls or client.tls,
        "tls_ca_file": args.tls_ca or client.tls_ca_file,
        "tls_cert_file": args.tls_cert or client.tls_cert_file,
        "tls_key_file": args.tls_key or client.tls_key_file,
    }


def target(args: argparse.Namespace) -> str:
    """--target, else where `searchsvc serve` listens by the same config (an all-interfaces host: this machine)."""
    if args.target:
        return args.target
    settings = load_settings(args.config)
    host = "127.0.0.1" if settings.host in ("", "0.0.0.0", "[::]", "::") else settings.host
    return f"{host}:{settings.port}"


def add_connection_flags(p: argparse.ArgumentParser, timeout: float | None = None) -> None:
    p.add_argument("--target", default="", help="the server, host:port (default: the config's host and port, as `serve` uses)")
    p.add_argument("--api-key", default="", help="sent as 'authorization: Bearer <key>' (or config client.api_key)")
    p.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's CAs")
    p.add_argument("--tls-ca", type=Path, help="the CA that signed the server's certificate (implies --tls)")
    p.add_argument("--tls-cert", type=Path, help="this client's certificate, for mutual TLS")
    p.add_argument("--tls-key", type=Path, help="its private key")
    if timeout is not None:
        p.add_argument("--timeout", type=float, default=timeout, help=f"deadline of each call in seconds (default {timeout:g})")


def connect(args: argparse.Namespace):
    """(channel, stub) to the server the flags name; close the channel when done (`with channel:`)."""
    from searchsvc.client.channel import open_channel
    from searchsvc.v1 import searchsvc_pb2_grpc as pb_grpc

    channel = open_channel(target(args), **connection_options(args))
    return channel, pb_grpc.SearchServiceStub(channel)


def describe_rpc_error(err) -> list[str]:
    """A failed call in plain lines: status and message, then each field violation the server attached."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    lines = [f"error: {err.code().name}: {err.details()}"]
    status = rpc_status.from_call(err) if hasattr(err, "trailing_metadata") else None
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            lines += [f"  field {v.field}: {v.description}" for v in bad.field_violations]
    return lines


def reports_rpc_errors(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A command whose failed calls print describe_rpc_error and exit 1, and whose Ctrl-C exits 130."""
    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        import grpc

        try:
            return command(args)
        except grpc.RpcError as err:
            print("\n".join(describe_rpc_error(err)), file=sys.stderr)
            return EXIT_RPC_ERROR
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
    return run


def add_filter_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="only what has this exact string metadata pair (repeat: all of them)")
    p.add_argument("--where", metavar="JSON", help='a Filter as JSON, e.g. \'{"must":[{"key":"year","range":{"gte":{"intValue":2020}}}]}\'')


def apply_filter_flags(args: argparse.Namespace, request) -> None:
    """--filter pairs into request.filter and --where (protobuf's JSON mapping of Filter) into request.where."""
    from google.protobuf import json_format

    for pair in args.filter:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --filter {pair!r}: expected KEY=VALUE")
        request.filter[key] = value
    if args.where:
        try:
            json_format.Parse(args.where, request.where)
        except (json_format.ParseError, json.JSONDecodeError) as exc:
            raise SystemExit(f"error: --where: {exc}") from None


def settings_from(args: argparse.Namespace, **extra):
    """The settings a local command runs with: `--config`, then SEARCHSVC_*, then its own flags (`--index-dir`
    and the given overrides, where set)."""
    overrides = {k: v for k, v in extra.items() if v is not None}
    if getattr(args, "index_dir", None) is not None:
        overrides["index_dir"] = args.index_dir
    return load_settings(getattr(args, "config", None), **overrides)
