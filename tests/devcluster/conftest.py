"""Fixtures for the embedded cluster's own tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from operator_engine.devcluster import BYPASS_FAULTS_HEADER, EmbeddedCluster

NS = "ocean-compute"


@pytest.fixture
async def cluster() -> AsyncIterator[EmbeddedCluster]:
    async with EmbeddedCluster(namespace=NS) as running:
        yield running


@pytest.fixture
async def http(cluster: EmbeddedCluster) -> AsyncIterator[aiohttp.ClientSession]:
    """A raw HTTP client on the cluster (subject to injected faults, like an operator)."""
    async with aiohttp.ClientSession(base_url=cluster.url) as session:
        yield session


@pytest.fixture
async def admin_http(cluster: EmbeddedCluster) -> AsyncIterator[aiohttp.ClientSession]:
    """A raw HTTP client that injected faults never hit."""
    async with aiohttp.ClientSession(base_url=cluster.url, headers={BYPASS_FAULTS_HEADER: "1"}) as session:
        yield session
