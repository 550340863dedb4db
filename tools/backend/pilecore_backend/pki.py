"""`pilecore-backend pki`: a throw-away PKI for loopback tests and demos (P-256 everywhere)."""

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

FILES = {
    "ca": "ca.pem", "ca_key": "ca.key",
    "broker_cert": "broker.pem", "broker_key": "broker.key",
    "backend_cert": "backend.pem", "backend_key": "backend.key",
    "device_cert": "device.pem", "device_key": "device.key",
    "lns_cert": "lns.pem", "lns_key": "lns.key",
    "command_key": "command.key", "command_public_key": "command.pub.pem",
}


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pilecore test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path, data, private):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600 if private else 0o644)  # also when the file existed with other bits


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject_cn, key, issuer, issuer_key, ca=False, usage=None, sans=()):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(subject_cn))
               .issuer_name(issuer)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=3650 if ca else 825))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


# The leaf certificates: stem, common name, extended key usage, subject alternative names.
LEAVES = [
    ("broker", "localhost", ExtendedKeyUsageOID.SERVER_AUTH,
     (x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"))),
    ("backend", "pilecore-backend", ExtendedKeyUsageOID.CLIENT_AUTH, ()),
    ("device", "pilecore-device", ExtendedKeyUsageOID.CLIENT_AUTH, ()),
    # The LoRaWAN network server's MQTT integration (6.2) publishes on the same broker.
    ("lns", "pilecore network server", ExtendedKeyUsageOID.CLIENT_AUTH, ()),
]


def _paths(directory):
    return {name: os.path.join(directory, f) for name, f in FILES.items()}


def _leaf(path, stem, cn, usage, sans, ca_name, ca_key):
    key = ec.generate_private_key(ec.SECP256R1())
    _write(path[stem + "_key"], _key_pem(key), True)
    _write(path[stem + "_cert"], _cert(cn, key, ca_name, ca_key, usage=usage, sans=sans), False)


def _command_key(path, command=None):
    if command is None:
        command = ec.generate_private_key(ec.SECP256R1())
        _write(path["command_key"], _key_pem(command), True)
    _write(path["command_public_key"], command.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), False)


def make(directory):
    """Write the CA, the broker's, back end's, device's and network server's certificates and
    the command key."""
    os.makedirs(directory, exist_ok=True)
    path = _paths(directory)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("pilecore test CA")
    _write(path["ca_key"], _key_pem(ca_key), True)
    _write(path["ca"], _cert("pilecore test CA", ca_key, ca_name, ca_key, ca=True), False)
    for stem, cn, usage, sans in LEAVES:
        _leaf(path, stem, cn, usage, sans, ca_name, ca_key)
    _command_key(path)
    return path


def ensure(directory):
    """The PKI in `directory`. With the CA there, only what is missing is made (signed by that
    CA), so certificates handed out before stay valid, e.g. a directory made before the network
    server's certificate existed gains it; without the CA everything is made anew."""
    path = _paths(directory)
    if all(os.path.exists(p) for p in path.values()):
        return path
    if not (os.path.exists(path["ca"]) and os.path.exists(path["ca_key"])):
        return make(directory)
    with open(path["ca_key"], "rb") as f:
        ca_key = serialization.load_pem_private_key(f.read(), password=None)
    with open(path["ca"], "rb") as f:
        ca_name = x509.load_pem_x509_certificate(f.read()).subject
    for stem, cn, usage, sans in LEAVES:
        if not (os.path.exists(path[stem + "_cert"]) and os.path.exists(path[stem + "_key"])):
            _leaf(path, stem, cn, usage, sans, ca_name, ca_key)
    if not os.path.exists(path["command_key"]):
        _command_key(path)
    elif not os.path.exists(path["command_public_key"]):
        with open(path["command_key"], "rb") as f:
            _command_key(path, serialization.load_pem_private_key(f.read(), password=None))
    return path
