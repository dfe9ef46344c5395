"""Redis over TLS, for real: a TLS-only redis-server that requires client certificates, with a
CA, a server and a client certificate made by openssl for the test. The store works with the
right CA and client certificate; without the client certificate, or trusting another CA, the
calls are decided by fail_mode (degraded), in bounded time."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support import free_port, make_config

from callscreen import config as config_mod
from callscreen.config import Config, ConfigError
from callscreen.engine import Engine
from callscreen.rules import RuleSet
from callscreen.store import Store

CALLER = "+33353010043"
pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=d)


def make_cert(d: Path, name: str, ca: str) -> None:
    (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout",
            f"{name}.key", "-out", f"{name}.csr", cwd=d)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt",
            cwd=d)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    d = tmp_path_factory.mktemp("tls")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    make_cert(d, "server", "ca")
    make_cert(d, "client", "ca")
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(d / "server.crt"), "--tls-key-file", str(d / "server.key"),
         "--tls-ca-cert-file", str(d / "ca.crt"), "--tls-auth-clients", "yes", "--save", "",
         "--appendonly", "no", "--dir", str(d), "--logfile", str(d / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, ssl=True, ssl_ca_certs=str(d / "ca.crt"),
                         ssl_certfile=str(d / "client.crt"), ssl_keyfile=str(d / "client.key"),
                         socket_timeout=0.5)
    for _ in range(250):
        try:
            client.ping()
            break
        except redis.RedisError:
            if proc.poll() is not None:
                pytest.fail(f"TLS redis-server did not start: {(d / 'redis.log').read_text()}")
            time.sleep(0.02)
    try:
        yield port, d
    finally:
        proc.terminate()
        proc.wait(5)


def tls_config(port: int, d: Path, yaml_tls: str) -> Config:
    text = (f"redis:\n  url: 'rediss://127.0.0.1:{port}/0'\n{yaml_tls}"
            f"region: FR\nrules_dir: {make_config('redis://x').rules_dir}\n")
    return config_mod.load_text(text, str(d / "callscreen.yaml"), base_dir=d)


def decide(cfg: Config, rules: RuleSet) -> tuple[Engine, bool]:
    engine = Engine(cfg, rules, Store.from_config(cfg))
    started = time.monotonic()
    decision = engine.decide(engine.make_call(CALLER, None))
    assert time.monotonic() - started < 1.0
    return engine, decision.verdict.degraded


def test_tls_with_ca_and_client_certificate(tls_redis: tuple[int, Path],
                                            shipped_rules: RuleSet) -> None:
    port, d = tls_redis
    cfg = tls_config(port, d, "  tls_ca_file: ca.crt\n  tls_cert_file: client.crt\n"
                              "  tls_key_file: client.key\n")
    assert cfg.redis.tls_ca_file == str(d / "ca.crt")  # relative to the config's directory
    engine, degraded = decide(cfg, shipped_rules)
    assert not degraded
    assert engine.store is not None
    assert engine.store.vote(CALLER, "+33199000001", time.time(), rate_limited=False)[0]
    assert engine.decide(engine.make_call(CALLER, None)).facts.record.reports == 1  # type: ignore[union-attr]


def test_tls_without_a_client_certificate_is_refused(tls_redis: tuple[int, Path],
                                                     shipped_rules: RuleSet) -> None:
    port, d = tls_redis
    _, degraded = decide(tls_config(port, d, "  tls_ca_file: ca.crt\n"), shipped_rules)
    assert degraded


def test_tls_server_signed_by_another_ca_is_not_trusted(tls_redis: tuple[int, Path],
                                                        shipped_rules: RuleSet) -> None:
    port, d = tls_redis
    cfg = tls_config(port, d, "  tls_ca_file: other-ca.crt\n  tls_cert_file: client.crt\n"
                              "  tls_key_file: client.key\n")
    _, degraded = decide(cfg, shipped_rules)
    assert degraded


def test_tls_files_are_checked_when_the_config_loads(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        config_mod.load_text("redis:\n  url: redis://127.0.0.1:6379/0\n  tls_ca_file: nope.crt\n"
                             "  tls_cert_file: c.crt\n", "c.yaml", base_dir=tmp_path)
    text = str(exc.value)
    assert "c.yaml:3: file 'nope.crt' not found or not readable" in text
    assert "c.yaml:4: file 'c.crt' not found or not readable" in text
    assert "needs a rediss:// url" in text
