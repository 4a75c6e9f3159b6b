"""Fixtures for the security tests: loopback servers and a stubbed network (see ``pods.harness``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pods.harness import FileServer, NetworkStub, file_handler, serve


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    """A scripted HTTP file server on 127.0.0.1."""
    state = FileServer()
    yield from serve(file_handler(state), state)


@pytest.fixture
def network(monkeypatch: pytest.MonkeyPatch) -> Iterator[NetworkStub]:
    """The configure pod's resolver and connect step, stubbed; fails any test that connects off loopback."""
    stub = NetworkStub().install(monkeypatch)
    yield stub
    assert not stub.violations, f"connections attempted beyond loopback: {stub.violations}"
