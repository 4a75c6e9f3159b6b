"""The demo data server: serves the packaged data, and says clearly when its port is taken."""

from __future__ import annotations

import socket

import aiohttp
import pytest

from operator_engine.demo import DataServerError, demo_data_dir, serve_demo_data


async def test_serves_the_packaged_dataset_and_algorithm() -> None:
    async with serve_demo_data(0) as url, aiohttp.ClientSession() as http:
        async with http.get(f"{url}/data/uk-weather-2011.csv") as r:
            assert r.status == 200
            assert await r.read() == (demo_data_dir() / "data" / "uk-weather-2011.csv").read_bytes()
        async with http.get(f"{url}/algorithms/weather_summary.py") as r:
            assert r.status == 200
        async with http.get(f"{url}/algorithms/absent.py") as r:
            assert r.status == 404


async def test_a_taken_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(DataServerError, match=f"127.0.0.1:{port}.*in use"):
            async with serve_demo_data(port):
                pass
