"""TLS for the server (reloaded when its files change) and for clients (the CLI, eval, bench, searchsvc.client.channel)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import grpc

from searchsvc.config import TlsSettings

log = logging.getLogger(__name__)


def _read(path: Path | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


class _ReloadingCertificate:
    """grpc's certificate_configuration_fetcher: called at each new connection's handshake; returns a new
    configuration only when a file changed (mtime or size), None to keep the current one. A half-written
    renewal (unreadable or mismatched files) keeps the old certificate and is logged."""

    def __init__(self, tls: TlsSettings) -> None:
        self.tls = tls
        self.files = [p for p in (tls.cert_file, tls.key_file, tls.client_ca_file) if p]
        self.stamp = self._stamp()
        self.current = self._configuration()

    def _stamp(self) -> tuple:
        return tuple((os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in self.files)

    def _configuration(self):
        return grpc.ssl_server_certificate_configuration(
            [(_read(self.tls.key_file), _read(self.tls.cert_file))], root_certificates=_read(self.tls.client_ca_file))

    def __call__(self):
        try:
            stamp = self._stamp()
            if stamp == self.stamp:
                return None
            configuration = self._configuration()
        except Exception as exc:
            log.error("TLS files changed but could not be loaded; keeping the current certificate: %s", exc)
            return None
        self.stamp, self.current = stamp, configuration
        log.info("TLS certificate reloaded from %s", self.tls.cert_file)
        return configuration


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    fetcher = _ReloadingCertificate(tls)
    return grpc.dynamic_ssl_server_credentials(fetcher.current, fetcher, require_client_authentication=bool(tls.client_ca_file))


def channel_credentials(ca_file: Path | None = None, cert_file: Path | None = None,
                        key_file: Path | None = None) -> grpc.ChannelCredentials:
    """A client's TLS: the CA that signed the server (None: the system's), and its own certificate for mutual TLS."""
    return grpc.ssl_channel_credentials(_read(ca_file), _read(key_file), _read(cert_file))
