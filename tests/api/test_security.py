"""TLS, mutual TLS and API keys with roles (issue 17), against a real server on loopback with certificates made
here (`cryptography`): handshakes, plaintext refused, every RPC of the proto allowed or denied per role, keys
scoped to collections, constant-time key comparison, certificate reload, no anonymous non-loopback server."""

from __future__ import annotations

import datetime
import ipaddress
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import server_settings
from searchsvc.api.auth import RULES, KeyRing, Principal, Role, hash_key
from searchsvc.client.channel import open_channel
from searchsvc.v1 import searchsvc_pb2 as pb
from searchsvc.v1 import searchsvc_pb2_grpc as pb_grpc

x509 = pytest.importorskip("cryptography.x509", reason="cryptography (the dev extra) makes the test certificates")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

KEYS = {"reader": "r-key-0123456789", "writer": "w-key-0123456789", "admin": "a-key-0123456789", "team-b": "b-key-0123456789"}
ROLES = {"reader": "read", "writer": "write", "admin": "admin", "team-b": "admin"}  # team-b: on team-b-* only


# ------------------------------------------------------------------ certificates
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    return cert, key


def issue(ca, cn: str, *, server: bool) -> tuple[bytes, bytes]:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1)))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                                     x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    server_ca, client_ca = make_ca("test server CA"), make_ca("test client CA")
    (d / "server-ca.pem").write_bytes(pem(server_ca[0]))
    (d / "client-ca.pem").write_bytes(pem(client_ca[0]))
    cert, key = issue(server_ca, "searchsvc", server=True)
    (d / "server.pem").write_bytes(cert)
    (d / "server.key").write_bytes(key)
    cert, key = issue(client_ca, "a client", server=False)
    (d / "client.pem").write_bytes(cert)
    (d / "client.key").write_bytes(key)
    return d, server_ca


@pytest.fixture(scope="module")
def secured(pki, tmp_path_factory):
    """One in-process server: TLS, and the four keys of KEYS (team-b: admin on team-b-* only)."""
    from searchsvc.api.server import BackgroundServer

    d, _ = pki
    keys = [{"name": n, "sha256": hash_key(k), "role": ROLES[n], "collections": ["team-b-*"] if n == "team-b" else []}
            for n, k in KEYS.items()]
    settings = server_settings(tmp_path_factory.mktemp("idx"),
                               tls={"cert_file": d / "server.pem", "key_file": d / "server.key"}, auth={"keys": keys})
    with BackgroundServer(settings) as running:
        yield running, d


def channel_to(secured, key: str = "", **tls) -> grpc.Channel:
    server, d = secured
    return open_channel(f"localhost:{server.port}", api_key=key, tls_ca_file=tls.pop("ca", d / "server-ca.pem"), **tls)


# ------------------------------------------------------------------ TLS
def test_tls_handshake_and_plaintext_refused(secured):
    server, d = secured
    with channel_to(secured, KEYS["reader"]) as ch:
        pb_grpc.SearchServiceStub(ch).ListCollections(pb.ListCollectionsRequest(), timeout=10)
    with grpc.insecure_channel(f"localhost:{server.port}") as ch:  # plaintext to a TLS port
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.SearchServiceStub(ch).ListCollections(pb.ListCollectionsRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with channel_to(secured, KEYS["reader"], ca=d / "client-ca.pem") as ch:  # a CA that did not sign the server
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.SearchServiceStub(ch).ListCollections(pb.ListCollectionsRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_needs_a_client_certificate_and_the_server_certificate_reloads(pki, tmp_path):
    from searchsvc.api.server import BackgroundServer

    d, server_ca = pki
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.write_bytes((d / "server.pem").read_bytes())
    key.write_bytes((d / "server.key").read_bytes())
    settings = server_settings(tmp_path / "idx",
                               tls={"cert_file": cert, "key_file": key, "client_ca_file": d / "client-ca.pem"})

    def list_with(**tls):
        with open_channel(f"localhost:{server.port}", **tls) as ch:
            return pb_grpc.SearchServiceStub(ch).ListCollections(pb.ListCollectionsRequest(), timeout=5)

    with BackgroundServer(settings) as server:
        list_with(tls_ca_file=d / "server-ca.pem", tls_cert_file=d / "client.pem", tls_key_file=d / "client.key")
        with pytest.raises(grpc.RpcError) as err:
            list_with(tls_ca_file=d / "server-ca.pem")  # no client certificate
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # Renew the server certificate from another CA, in place: new connections get it, no restart.
        new_ca = make_ca("renewed server CA")
        (tmp_path / "new-ca.pem").write_bytes(pem(new_ca[0]))
        new_cert, new_key = issue(new_ca, "searchsvc", server=True)
        time.sleep(0.01)  # a later mtime
        key.write_bytes(new_key)
        cert.write_bytes(new_cert)
        list_with(tls_ca_file=tmp_path / "new-ca.pem", tls_cert_file=d / "client.pem", tls_key_file=d / "client.key")


# ------------------------------------------------------------------ keys and roles
TOUCHED = "team-a-missing"  # collection-scoped requests name a collection that does not exist: nothing changes


def requests_for(method: str):
    """A request for every RPC in the proto (a new RPC without one fails test_every_rpc_has_a_rule_and_a_request)."""
    search = pb.SearchRequest(collection=TOUCHED, query="q")
    return {
        "CreateCollection": pb.CreateCollectionRequest(name="team-a-created", config=pb.CollectionConfig(embedding_model="external", dimension=2)),
        "GetCollection": pb.GetCollectionRequest(name=TOUCHED),
        "ListCollections": pb.ListCollectionsRequest(),
        "DeleteCollection": pb.DeleteCollectionRequest(name=TOUCHED),
        "ReembedCollection": pb.ReembedCollectionRequest(name=TOUCHED, embedding_model="all-MiniLM-L6-v2"),
        "ReopenCollection": pb.ReopenCollectionRequest(name=TOUCHED),
        "BulkIndex": pb.BulkIndexRequest(collection=TOUCHED, documents=[pb.Document(id="a", text="b")]),
        "DeleteDocuments": pb.DeleteDocumentsRequest(collection=TOUCHED, ids=["a"]),
        "Search": search,
        "Answer": pb.AnswerRequest(search=search, extractive=True),
        "StreamAnswer": pb.AnswerRequest(search=search, extractive=True),
        "GetAnswerStats": pb.GetAnswerStatsRequest(),
        "GetDocuments": pb.GetDocumentsRequest(collection=TOUCHED, ids=["a"]),
        "ListDocuments": pb.ListDocumentsRequest(collection=TOUCHED),
        "CountDocuments": pb.CountDocumentsRequest(collection=TOUCHED),
        "UpdateAliases": pb.UpdateAliasesRequest(actions=[pb.AliasAction(create=pb.Alias(alias="team-a-alias", collection=TOUCHED))]),
        "ListAliases": pb.ListAliasesRequest(),
        "CreateSnapshot": pb.CreateSnapshotRequest(collection=TOUCHED),
        "ListSnapshots": pb.ListSnapshotsRequest(),
        "DeleteSnapshot": pb.DeleteSnapshotRequest(name=f"{TOUCHED}@1-1"),
        "RestoreSnapshot": pb.RestoreSnapshotRequest(name=f"{TOUCHED}@1-1", collection="team-a-restored"),
        "DownloadSnapshot": pb.DownloadSnapshotRequest(name=f"{TOUCHED}@1-1"),
        "UploadSnapshot": pb.UploadSnapshotRequest(name=f"{TOUCHED}@1-1"),
    }.get(method)


def service_methods():
    return list(pb.DESCRIPTOR.services_by_name["SearchService"].methods)


def call(ch: grpc.Channel, m, request) -> grpc.StatusCode:
    path = f"/searchsvc.v1.SearchService/{m.name}"
    kind = ("stream" if m.client_streaming else "unary") + "_" + ("stream" if m.server_streaming else "unary")
    rpc = getattr(ch, kind)(path, request_serializer=lambda r: r.SerializeToString(), response_deserializer=lambda b: b)
    try:
        result = rpc(iter([request]) if m.client_streaming else request, timeout=60)
        if m.server_streaming:
            list(result)
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()


def test_every_rpc_has_a_rule_and_a_request():
    names = {m.name for m in service_methods()}
    assert names == set(RULES), "a new RPC needs a rule in searchsvc/api/auth.py"
    assert names == set(NEEDED), "... and its expected role in this test"
    assert all(requests_for(n) is not None for n in names)


# The contract, written out here (not read from RULES): read may Search, Answer, Get, List and Count; write may
# also index and delete documents; admin may also create, delete, re-embed and reopen collections, change aliases
# and handle snapshots (which hold a collection's whole data).
NEEDED = {
    "GetCollection": Role.READ, "ListCollections": Role.READ, "Search": Role.READ, "Answer": Role.READ,
    "StreamAnswer": Role.READ, "GetAnswerStats": Role.READ, "GetDocuments": Role.READ, "ListDocuments": Role.READ,
    "CountDocuments": Role.READ, "ListAliases": Role.READ,
    "BulkIndex": Role.WRITE, "DeleteDocuments": Role.WRITE,
    "CreateCollection": Role.ADMIN, "DeleteCollection": Role.ADMIN, "ReembedCollection": Role.ADMIN, "ReopenCollection": Role.ADMIN,
    "UpdateAliases": Role.ADMIN, "CreateSnapshot": Role.ADMIN, "ListSnapshots": Role.ADMIN, "DeleteSnapshot": Role.ADMIN,
    "RestoreSnapshot": Role.ADMIN, "DownloadSnapshot": Role.ADMIN, "UploadSnapshot": Role.ADMIN,
}
# Not about one collection (a listing is cut to the key's scope).
SERVER_WIDE = {"ListCollections", "GetAnswerStats", "ListAliases", "ListSnapshots"}


@pytest.mark.parametrize("who", ["nobody", "bad", "reader", "writer", "admin", "team-b"])
def test_each_role_is_allowed_and_denied_on_each_rpc(secured, who):
    key = {"nobody": "", "bad": "not-a-key"}.get(who, KEYS.get(who, ""))
    role = Role[ROLES[who].upper()] if who in ROLES else None
    with channel_to(secured, key) as ch:
        for m in service_methods():
            got = call(ch, m, requests_for(m.name))
            if role is None:
                expected = grpc.StatusCode.UNAUTHENTICATED
            elif role < NEEDED[m.name]:
                expected = grpc.StatusCode.PERMISSION_DENIED
            elif who == "team-b" and m.name not in SERVER_WIDE:  # names team-a-*: outside its scope
                expected = grpc.StatusCode.PERMISSION_DENIED
            else:
                expected = None  # allowed: whatever the call itself answers (NOT_FOUND on the missing collection...)
            if expected is None:
                assert got not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED), (who, m.name, got)
            else:
                assert got == expected, (who, m.name, got)


def test_scoped_keys_see_only_their_collections_and_model_overrides_need_admin(secured):
    with channel_to(secured, KEYS["team-b"]) as ch:
        stub = pb_grpc.SearchServiceStub(ch)
        stub.CreateCollection(pb.CreateCollectionRequest(name="team-b-docs", config=pb.CollectionConfig(embedding_model="external", dimension=2)))
    with channel_to(secured, KEYS["admin"]) as ch:
        stub = pb_grpc.SearchServiceStub(ch)
        stub.CreateCollection(pb.CreateCollectionRequest(name="team-c-docs", config=pb.CollectionConfig(embedding_model="external", dimension=2)))
        assert {"team-b-docs", "team-c-docs"} <= {c.name for c in stub.ListCollections(pb.ListCollectionsRequest()).collections}
    with channel_to(secured, KEYS["team-b"]) as ch:
        stub = pb_grpc.SearchServiceStub(ch)
        assert [c.name for c in stub.ListCollections(pb.ListCollectionsRequest()).collections] == ["team-b-docs"]
        # A stream that switches collection midway is refused at the message that leaves the scope.
        stream = stub.BulkIndex(iter([
            pb.BulkIndexRequest(collection="team-b-docs", documents=[pb.Document(id="x", text="y", vector=[1, 0])]),
            pb.BulkIndexRequest(collection="team-c-docs", documents=[pb.Document(id="x", text="y", vector=[1, 0])]),
        ]))
        with pytest.raises(grpc.RpcError) as err:
            list(stream)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "team-c-docs" in err.value.details()
        # Nor does naming another team's collection among several reach it.
        for search in (pb.SearchRequest(collection="team-b-docs", collections=["team-c-docs"], query="y"),
                       pb.SearchRequest(collections=["team-b-docs", "team-c-docs"], query="y")):
            with pytest.raises(grpc.RpcError) as err:
                stub.Search(search)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "team-c-docs" in err.value.details()
            with pytest.raises(grpc.RpcError) as err:
                stub.Answer(pb.AnswerRequest(search=search, extractive=True))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # Nor an alias: it would name another team's collection with this team's name.
        with pytest.raises(grpc.RpcError) as err:
            stub.UpdateAliases(pb.UpdateAliasesRequest(actions=[
                pb.AliasAction(create=pb.Alias(alias="team-b-way-in", collection="team-c-docs"))]))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "team-c-docs" in err.value.details()
        stub.UpdateAliases(pb.UpdateAliasesRequest(actions=[pb.AliasAction(create=pb.Alias(alias="team-b-main", collection="team-b-docs"))]))
    with channel_to(secured, KEYS["admin"]) as ch:
        stub = pb_grpc.SearchServiceStub(ch)
        stub.UpdateAliases(pb.UpdateAliasesRequest(actions=[pb.AliasAction(create=pb.Alias(alias="team-c-main", collection="team-c-docs"))]))
        assert len(stub.ListAliases(pb.ListAliasesRequest()).aliases) == 2
    with channel_to(secured, KEYS["team-b"]) as ch:
        assert [a.alias for a in pb_grpc.SearchServiceStub(ch).ListAliases(pb.ListAliasesRequest()).aliases] == ["team-b-main"]
    with channel_to(secured, KEYS["writer"]) as ch:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.SearchServiceStub(ch).Search(pb.SearchRequest(collection="team-b-docs", query="y", query_vector=[1, 0],
                                                                  rerank=pb.RerankOptions(enabled=True, model="/etc")))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "model" in err.value.details()


def test_health_and_reflection_stay_open_without_a_key(secured):
    with channel_to(secured) as ch:
        assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        answer = next(reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
        assert "searchsvc.v1.SearchService" in [s.name for s in answer.list_services_response.service]


def test_keys_are_compared_in_constant_time_against_every_key(monkeypatch):
    import searchsvc.api.auth as auth

    ring = KeyRing(Principal(n, hash_key(k), Role.READ) for n, k in KEYS.items())
    compared = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    assert ring.match(KEYS["reader"]).name == "reader"  # the first key matches; the others are still compared
    assert len(compared) == len(KEYS)
    assert ring.match("wrong") is None and ring.match("") is None


def test_keys_are_never_logged_and_a_public_address_needs_keys(tmp_path):
    from conftest import ServerProcess

    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(f'[[keys]]\nname = "ops"\nrole = "admin"\nsha256 = "{hash_key("secret-ops-key-42")}"\n')
    with ServerProcess(tmp_path / "a", env={"SEARCHSVC_AUTH__KEYS_FILE": str(keys_file), "SEARCHSVC_LOG_LEVEL": "INFO"}) as server:
        with open_channel(server.target, api_key="secret-ops-key-42") as ch:
            pb_grpc.SearchServiceStub(ch).ListCollections(pb.ListCollectionsRequest(), timeout=10)
        with open_channel(server.target, api_key="secret-ops-key-43") as ch:
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.SearchServiceStub(ch).ListCollections(pb.ListCollectionsRequest(), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    output = "".join(server.output)
    assert "API keys required" in output and "secret-ops-key" not in output
    anonymous = ServerProcess(tmp_path / "b", env={"SEARCHSVC_HOST": "0.0.0.0"})
    with pytest.raises(RuntimeError, match="refusing to serve 0.0.0.0 without API keys"):
        anonymous.start(timeout=120)


def test_new_key_prints_a_key_and_only_its_hash_for_the_config():
    import subprocess
    import sys
    import tomllib

    out = subprocess.run([sys.executable, "-m", "searchsvc", "new-key", "--name", "ci", "--role", "write", "--collections", "logs-*"],
                         capture_output=True, text=True, check=True).stdout
    key = out.split("key (shown once; give it to the caller): ")[1].split()[0]
    entry = tomllib.loads(out.split("(TOML):")[1])["auth"]["keys"][0]
    assert entry == {"name": "ci", "role": "write", "sha256": hash_key(key), "collections": ["logs-*"]}
    assert key not in out.split("(TOML):")[1]

