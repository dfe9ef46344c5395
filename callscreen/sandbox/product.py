"""Put the product into the Asterisk sandbox the way install.sh does on a real machine.

The process AGI (`callscreen.agi`, the dialplan's fallback) runs INSIDE the chroot, with the
chroot's own Python: so the package and its dependencies live in a venv there
(/opt/callscreen/venv, as install.sh makes it). Dependencies are pip-installed once and cached in
the rootfs; the current source tree is copied at every session so tests run today's code.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import threading
import tomllib
from pathlib import Path
from typing import Any

from callscreen.server import FastAGIServer, load_engine

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]  # a source checkout: callscreen/sandbox/..
VENV = "/opt/callscreen/venv"
SRC = "/opt/callscreen/src"
AGI_NAME = "callscreen.agi"
CHROOT_CONFIG = "/etc/callscreen/callscreen.yaml"
_CA_IN_CHROOT = "/etc/ssl/certs/host-ca.crt"


DIALPLAN_FILE = REPO / "config" / "extensions_callscreen.conf"
RULES = REPO / "rules"


def _dependencies() -> list[str]:
    pyproject = REPO / "pyproject.toml"
    if not pyproject.exists():
        raise RuntimeError("the Asterisk sandbox runs from a callscreen source checkout")
    with pyproject.open("rb") as fh:
        return list(tomllib.load(fh)["project"]["dependencies"])


def _in_chroot(root: Path, command: str, timeout: float = 600) -> None:
    """Run a shell command inside the chroot with /dev and /proc (private mount namespace)."""
    r = str(root)
    script = (
        f"mount --bind /dev {r}/dev && mount -t proc proc {r}/proc && "
        f"chroot {r} /bin/sh -c '{command}'"
    )
    env = dict(os.environ)
    env.update(SSL_CERT_FILE=_CA_IN_CHROOT, PIP_CERT=_CA_IN_CHROOT, PIP_FIND_LINKS="",
               PIP_CONSTRAINT="", PIP_EXTRA_INDEX_URL="", PIP_DISABLE_PIP_VERSION_CHECK="1")
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script],
        capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"in chroot: {command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def install(root: Path) -> None:
    """venv + dependencies (cached by their list), then today's source and the AGI script."""
    deps = _dependencies()
    stamp = hashlib.sha256("\n".join(deps).encode()).hexdigest()[:16]
    marker = root / VENV.lstrip("/") / ".callscreen-deps"
    if not marker.exists() or marker.read_text() != stamp:
        # The host's CA bundle, so pip in the chroot trusts what the host trusts (proxies).
        ca = Path(os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"))
        target = root / _CA_IN_CHROOT.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if ca.exists():
            shutil.copyfile(ca, target)
        shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
        log.info("installing callscreen dependencies into the chroot venv: %s", deps)
        quoted = " ".join(f'"{d}"' for d in deps).replace("'", "")
        _in_chroot(root, f"python3 -m venv {VENV} && {VENV}/bin/pip install -q {quoted}")
        marker.write_text(stamp)
    src = root / SRC.lstrip("/")
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(REPO / "callscreen", src / "callscreen",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "rules", src / "rules")
    # The venv finds the package through a .pth file: no build step, today's code every run.
    for site in (root / VENV.lstrip("/") / "lib").glob("python3*/site-packages"):
        (site / "callscreen-src.pth").write_text(SRC + "\n")


def agi_script(tmp: Path) -> Path:
    """agi_scripts/callscreen.agi with its shebang pointing at the venv, as install.sh does."""
    text = (REPO / "agi_scripts" / AGI_NAME).read_text().split("\n", 1)[1]
    out = tmp / AGI_NAME
    out.write_text(f"#!{VENV}/bin/python\n{text}")
    out.chmod(0o755)
    return out


def write_chroot_config(root: Path, yaml_text: str) -> None:
    path = root / CHROOT_CONFIG.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml_text)


def config_text(redis_url: str, rules_dir: str, did: str | list[str], *,
                extra: str = "", **challenge: Any) -> str:
    """A callscreen.yaml for sandbox runs: French line(s), short challenge timeouts; `extra` is
    appended YAML (other sections)."""
    settings = {"timeout_ms": 2500, "attempts": 2, "sounds_dir": "/nonexistent", **challenge}
    inline = ", ".join(f"{k}: {v!r}" if isinstance(v, str) else f"{k}: {v}"
                       for k, v in settings.items())
    dids = [did] if isinstance(did, str) else did
    lines = ", ".join(f"{{number: '{d}', name: line{i}, timezone: Europe/Paris}}"
                      for i, d in enumerate(dids))
    return (
        f"redis: {{url: '{redis_url}'}}\n"
        "region: FR\n"
        f"rules_dir: {rules_dir}\n"
        f"lines: [{lines}]\n"
        f"challenge: {{{inline}}}\n"
        "logging: {level: WARNING, target: stderr}\n"
        + extra
    )


class Screener:
    """The real FastAGI server in a thread, plus the same config inside the chroot (for the
    process AGI fallback)."""

    def __init__(self, workdir: Path, root: Path, redis_url: str, did: str | list[str],
                 extra: str = "", **challenge: Any):
        self.config = workdir / "callscreen.yaml"
        self.config.write_text(config_text(redis_url, str(RULES), did, extra=extra, **challenge))
        write_chroot_config(root, config_text(redis_url, f"{SRC}/rules", did, extra=extra,
                                              **challenge))
        self.server = FastAGIServer(load_engine(self.config), self.config, bind="127.0.0.1",
                                    port=0)
        self.thread: threading.Thread | None = None

    def start(self) -> int:
        _host, port = self.server.open()
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"drain_s": 5},
                                       daemon=True)
        self.thread.start()
        return port

    def stop(self) -> None:
        if self.thread is not None:
            self.server.stop()
            self.thread.join(10)
            self.thread = None
