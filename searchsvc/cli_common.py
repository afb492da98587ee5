"""What every command that talks to a server shares: its connection flags (target, API key, TLS)."""

from __future__ import annotations

import argparse
from pathlib import Path

from searchsvc.config import load_settings


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


def add_connection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="127.0.0.1:50051", help="the server, host:port")
    p.add_argument("--api-key", default="", help="sent as 'authorization: Bearer <key>' (or config client.api_key)")
    p.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's CAs")
    p.add_argument("--tls-ca", type=Path, help="the CA that signed the server's certificate (implies --tls)")
    p.add_argument("--tls-cert", type=Path, help="this client's certificate, for mutual TLS")
    p.add_argument("--tls-key", type=Path, help="its private key")
