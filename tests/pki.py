"""A throwaway PKI for tests: a county CA, a broker certificate and box client certificates (CN = box id).

Made fresh in each test with `cryptography` (EC P-256: fast to generate, what a county CA would issue
today). Nothing here is a fake: mosquitto and OpenSSL verify these exactly as they verify real ones.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support import Collector, Mosquitto

PrivateKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, written as PEM files (key mode 0600, as on a box)."""

    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "village-edge tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(dir_: Path, stem: str, cert: x509.Certificate, key: PrivateKey) -> Issued:
    cert_path, key_path = dir_ / f"{stem}.crt", dir_ / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return Issued(cert_path, key_path)


class TestCA:
    """A self-signed CA that issues server and client certificates into `dir_`."""

    __test__ = False  # not a pytest class

    def __init__(self, dir_: Path, name: str = "county-test-ca", *, days: int = 30) -> None:
        self.dir = dir_
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = _write(self.dir, name, self.cert, self.key).cert

    def _issue(self, cn: str, stem: str, *, server: bool, not_after: dt.datetime | None = None,
               not_before: dt.datetime | None = None) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(hours=1))
            .not_valid_after(not_after or now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return _write(self.dir, stem, builder.sign(self.key, hashes.SHA256()), key)

    def server(self, cn: str = "localhost", *, not_before: dt.datetime | None = None) -> Issued:
        return self._issue(cn, f"server-{cn}", server=True, not_before=not_before)

    def client(self, box_id: str, *, expired: bool = False) -> Issued:
        """A box certificate: CN = box id, which the broker takes as the MQTT username."""
        not_after = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5) if expired else None
        return self._issue(box_id, f"client-{box_id}{'-expired' if expired else ''}", server=False,
                           not_after=not_after)


# ---------------------------------------------------------------------------------------- county broker
COUNTY_CONF = Path(__file__).resolve().parent.parent / "docs" / "county" / "mosquitto.conf"


class CountyBroker(Mosquitto):
    """A real mosquitto started from the shipped docs/county/mosquitto.conf.

    Only what must differ on a test machine is rewritten: the port (and 127.0.0.1 only), the CA and broker
    certificate paths, the ACL and persistence paths, the log file, and `user root` when tests run as root.
    Every other line, TLS and ACL policy included, is the production file's.
    """

    def __init__(self, workdir: Path, ca: TestCA, acl_text: str, *, port: int | None = None,
                 server: Issued | None = None) -> None:
        super().__init__(workdir, port)
        self.ca = ca
        self.server = server or ca.server()
        self.acl = workdir / "acl"
        self.acl.write_text(acl_text)

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"

    def _write_conf(self) -> Path:
        swap = {
            "persistence_location": f"{self.workdir}/",
            "listener": f"{self.port} 127.0.0.1",
            "cafile": str(self.ca.pem),
            "certfile": str(self.server.cert),
            "keyfile": str(self.server.key),
            "acl_file": str(self.acl),
            "log_dest": f"file {self.log}",
        }
        out = []
        for line in COUNTY_CONF.read_text().splitlines():
            key = line.split(" ", 1)[0]
            out.append(f"{key} {swap[key]}" if key in swap and not line.startswith("#") else line)
        if os.geteuid() == 0:
            out.append("user root")  # else mosquitto drops to its own user and cannot read the test files
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(out) + "\n")
        return conf

    def new_connections(self) -> int:
        """How many TCP connections the broker has accepted (its own log, `connection_messages true`)."""
        try:
            return self.log.read_text(errors="replace").count("New connection from")
        except FileNotFoundError:
            return 0


def tls_context(ca: TestCA, client: Issued | None, *, check_dates: bool = True) -> ssl.SSLContext:
    """What a county-side client or a box uses: trust the county CA, present `client` if given."""
    ctx = ssl.create_default_context(cafile=str(ca.pem))
    if not check_dates:  # for a broker certificate made valid only in the future (clock-fault tests)
        ctx.verify_flags |= 0x200000  # X509_V_FLAG_NO_CHECK_TIME
    if client is not None:
        ctx.load_cert_chain(str(client.cert), str(client.key))
    return ctx


def tls_collector(broker: CountyBroker, identity: Issued | None, topics: list[str] | tuple[str, ...] = ("vc/v1/#",),
                  client_id: str | None = None, *, check_dates: bool = True) -> Collector:
    """A tests.support.Collector (thread-safe recorder) over TLS with `identity` as its certificate."""
    c = Collector(f"mqtt://127.0.0.1:{broker.port}", topics, client_id=client_id)
    c.client.tls_set_context(tls_context(broker.ca, identity, check_dates=check_dates))
    return c.start()
