"""The harness itself (tests/helpers.py): the ports it hands out stay free for the tool, and a
tool that fails to start says why in the failure, not 60 s of apparent silence."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.helpers import EPHEMERAL_PORTS, free_port


def test_free_port_is_one_the_kernel_never_hands_out_by_itself():
    # A port from bind(0) goes back to the kernel's pool when the probe closes: any socket
    # binding port 0 or connecting out could take it before the tool binds it.
    first, last = (int(port) for port in EPHEMERAL_PORTS.read_text().split())
    for _ in range(20):
        port = free_port()
        assert not first <= port <= last, (port, first, last)
        with socket.socket() as tool_side:  # free for the tool, which binds all addresses
            tool_side.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tool_side.bind(("0.0.0.0", port))


def test_a_tool_that_ends_before_it_is_ready_fails_at_once_with_its_line(start_tool):
    # What CI showed as "printed nothing for 60 s": the port was taken before the tool's
    # check, the tool said so in one line and exited 2, and the failure hid both.
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        tool = start_tool(MODEL_SERVER_PORT=str(port))
        with pytest.raises(AssertionError) as failure:
            tool.ready()
    message = str(failure.value)
    assert "the tool ended (pid" in message and "exit status 2" in message, message
    assert f"MODEL_SERVER_PORT='{port}'" in message and "Address already in use" in message


def test_a_timeout_shows_the_output_at_the_deadline_and_where_each_process_waits(start_tool):
    tool = start_tool()
    tool.ready()
    with pytest.raises(AssertionError) as failure:
        tool.wait_for_line("a line the tool never prints", timeout=0.5)
    message = str(failure.value)
    assert "success: rotator entered RUNNING" in message, message
    assert "-- the tool's processes --" in message
    supervisord = f"{tool.process.pid} '"
    assert supervisord in message and "State " in message, message
    assert "-m worker rotator" in message and "fds 0->" in message, message
    assert Path(f"/proc/{tool.process.pid}").exists()  # only looked at, still running
