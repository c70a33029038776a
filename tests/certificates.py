"""Self-signed certificates made for a test: a CA, server and client certificates (openssl)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(folder: Path, name: str = "semcache-test-ca") -> Pair:
    folder.mkdir(parents=True, exist_ok=True)
    _run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=folder,
    )
    return Pair(folder / "ca.pem", folder / "ca.key")


def make_cert(folder: Path, ca: Pair, name: str, *, server: bool) -> Pair:
    """A certificate for `name` signed by `ca`; server ones are valid for localhost too."""
    key, csr, cert = f"{name}.key", f"{name}.csr", f"{name}.pem"
    _run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={name}",
        "-keyout",
        key,
        "-out",
        csr,
        cwd=folder,
    )
    extensions = folder / f"{name}.ext"
    usage = "serverAuth" if server else "clientAuth"
    alt = f"subjectAltName=DNS:{name},DNS:localhost,IP:127.0.0.1\n" if server else ""
    extensions.write_text(f"{alt}extendedKeyUsage={usage}\n")
    _run(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        str(ca.cert),
        "-CAkey",
        str(ca.key),
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        cert,
        "-extfile",
        str(extensions),
        cwd=folder,
    )
    return Pair(folder / cert, folder / key)
