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
import tomllib
from pathlib import Path

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
VENV = "/opt/callscreen/venv"
SRC = "/opt/callscreen/src"
AGI_NAME = "callscreen.agi"
CHROOT_CONFIG = "/etc/callscreen/callscreen.yaml"
_CA_IN_CHROOT = "/etc/ssl/certs/host-ca.crt"


def _dependencies() -> list[str]:
    with (REPO / "pyproject.toml").open("rb") as fh:
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
