"""sglang-router as agentrl launches it, against the real router binary: its Prometheus exporter
listens on the router's host only."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import aiohttp
import pytest

from agentrl.engines import RouterSpec
from agentrl.engines.router import RouterProcess

pytest.importorskip("sglang_router", reason="sglang-router is a test dependency (pip install -e '.[test]')")


def listening_addresses(port: int) -> set[str]:
    """The addresses that TCP sockets in LISTEN state on ``port`` are bound to (from /proc/net/tcp and tcp6)."""
    addresses = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)  # the kernel writes each 32-bit word in host (little-endian) order
                addresses.add(socket.inet_ntop(family, b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))))
    return addresses


async def test_the_routers_prometheus_exporter_listens_on_the_routers_host_only(tmp_path):
    router = RouterProcess(RouterSpec({"log_level": "warn"}), tmp_path)
    async with aiohttp.ClientSession() as http:
        await router.start(http, 60)
        try:
            command = router.process.command
            port = int(command[command.index("--prometheus-port") + 1])
            deadline = time.monotonic() + 10
            while not listening_addresses(port):
                assert time.monotonic() < deadline, f"nothing listens on the prometheus port {port} 10s after the router answered /health"
                await asyncio.sleep(0.1)
            assert listening_addresses(port) == {"127.0.0.1"}
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200
        finally:
            await router.stop(5)


def test_a_prometheus_host_in_router_args_is_kept():
    command = RouterSpec({"prometheus_host": "0.0.0.0"}, host="127.0.0.1").command(30000)
    assert command.count("--prometheus-host") == 1 and command[command.index("--prometheus-host") + 1] == "0.0.0.0"
