"""Fixtures for tests that drive a real Asterisk 22 (see README.md in this folder).

No __init__.py here on purpose: this folder would become a package named `asterisk`, which
shadows pyst2's `asterisk` package for the whole pytest session.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from callscreen.sandbox import asterisk as sandbox
from callscreen.sandbox import product
from callscreen.sandbox.asterisk import AsteriskSandbox, SandboxFactory, SandboxUnavailable

log = logging.getLogger(__name__)


def _unavailable(reason: str) -> NoReturn:
    # CI must prove the integration works: a silent skip there would hide a broken machine.
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"Asterisk sandbox unavailable in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def asterisk_rootfs() -> Path:
    """The Debian sid chroot with Asterisk, built on first use (~20 s) and cached."""
    reason = sandbox.unavailable_reason()
    if reason is not None:
        _unavailable(reason)
    try:
        return sandbox.ensure_rootfs()
    except SandboxUnavailable as exc:
        _unavailable(str(exc))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # Remember each phase's outcome on the item so fixtures can keep logs of failed tests.
    report = yield
    setattr(item, f"_asterisk_rep_{report.when}", report)
    return report


@pytest.fixture
def asterisk_sandbox_factory(
    asterisk_rootfs: Path,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SandboxFactory]:
    """make(**AsteriskSandbox kwargs) -> a started sandbox, stopped when the test ends.

    One sandbox at a time per rootfs: stop the first (sb.stop()) before making a second.
    When the test fails, Asterisk's logs are copied to a temp dir named in the report.
    """
    made: list[AsteriskSandbox] = []

    def make(**kwargs: Any) -> AsteriskSandbox:
        sb = AsteriskSandbox(asterisk_rootfs, **kwargs)
        made.append(sb)
        sb.start()
        return sb

    yield make

    for sb in reversed(made):
        sb.stop()
    failed = any(
        getattr(getattr(request.node, f"_asterisk_rep_{when}", None), "failed", False)
        for when in ("setup", "call")
    )
    if failed and made:
        # The next sandbox start wipes the chroot's logs: keep them while they tell something.
        dest = tmp_path_factory.mktemp("asterisk-logs")
        shutil.copytree(made[-1].log_dir, dest, dirs_exist_ok=True)
        tail = "\n".join(made[-1].read_full_log().splitlines()[-80:])
        request.node.add_report_section(
            "teardown", "asterisk", f"logs kept in {dest}\n--- tail of full log ---\n{tail}"
        )


@pytest.fixture
def asterisk_sandbox(asterisk_sandbox_factory: SandboxFactory) -> AsteriskSandbox:
    """A started sandbox with the default modules and no dialplan of the test's own."""
    return asterisk_sandbox_factory()


@pytest.fixture(scope="session")
def chroot_product(asterisk_rootfs: Path) -> Path:
    """The product installed in the chroot (venv + today's source), for the process AGI."""
    product.install(asterisk_rootfs)
    return asterisk_rootfs
