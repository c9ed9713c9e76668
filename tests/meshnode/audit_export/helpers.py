"""Test helpers for the audit export: a throwaway CA and server certificates, an RFC 5424 parser,
the PS3.15 A.5.1 schema (audit-message.rng beside this file)."""

from __future__ import annotations

import datetime
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from lxml import etree

SCHEMA_PATH = Path(__file__).with_name("audit-message.rng")

RFC5424 = re.compile(
    rb"^<(?P<pri>\d{1,3})>1 (?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)) "
    rb"(?P<host>[!-~]{1,255}) (?P<app>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) "
    rb"(?P<sd>-|(?:\[[^\]]*\])+) (?P<msg>.*)$", re.DOTALL)


@dataclass(frozen=True)
class Syslog:
    pri: int
    timestamp: str
    hostname: str
    app: str
    msgid: str
    xml: bytes


def parse_rfc5424(raw: bytes) -> Syslog:
    m = RFC5424.match(raw)
    if m is None:
        raise ValueError(f"not an RFC 5424 message: {raw[:120]!r}")
    msg = m["msg"]
    if not msg.startswith(b"\xef\xbb\xbf"):
        raise ValueError("MSG is not UTF-8 with a BOM (RFC 5424 6.4)")
    return Syslog(int(m["pri"]), m["ts"].decode(), m["host"].decode(), m["app"].decode(), m["msgid"].decode(),
                  msg[3:])


def split_frames(data: bytes) -> list[bytes]:
    """RFC 5425 octet-counting frames."""
    out = []
    while data:
        length, _, rest = data.partition(b" ")
        n = int(length)
        out.append(rest[:n])
        data = rest[n:]
    return out


def validate(xml: bytes) -> etree._Element:
    schema = etree.RelaxNG(etree.parse(str(SCHEMA_PATH)))
    doc = etree.fromstring(xml, etree.XMLParser(resolve_entities=False, no_network=True))
    if not schema.validate(doc):
        raise AssertionError(f"not valid against PS3.15 A.5.1: {schema.error_log}\n{xml.decode()}")
    return doc


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_pki(folder: Path, name: str = "ca") -> Pki:
    """A CA and a server certificate for 127.0.0.1 / localhost, signed by it."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test audit {name}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False),
                         critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pki = Pki(folder / f"{name}.pem", folder / f"{name}-server.pem", folder / f"{name}-server.key")
    pki.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.server_key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
    pki.server_key.chmod(0o600)
    return pki
