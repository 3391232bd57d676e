"""`node.app.ports`: a taken port is found by binding, and its holder through /proc (a real
listener of this test process, and a fake /proc tree for the parsing)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.app.ports import PortHolder, PortInUse, find_port_holder, is_port_free, validate_ports_free

HAS_PROC_NET = Path("/proc/net/tcp").exists()


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_is_port_free(listener: int) -> None:
    assert not is_port_free(listener)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert is_port_free(port)


@pytest.mark.skipif(not HAS_PROC_NET, reason="needs Linux /proc")
def test_holder_of_a_listener_is_this_process(listener: int) -> None:
    holder = find_port_holder(listener)
    assert holder is not None and holder.pid == os.getpid()
    assert "python" in holder.command or "pytest" in holder.command


def test_invalid_ports_in_use_are_named_with_their_holder(listener: int) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    with pytest.raises(PortInUse) as info:
        validate_ports_free({free: "node0 p2p", listener: "node0 rpc"}, hint="Pick others")
    [busy] = info.value.busy
    assert busy.port == listener and busy.role == "node0 rpc"
    assert f"port {listener} (node0 rpc) is in use by " in str(info.value) and str(info.value).endswith("Pick others")
    if HAS_PROC_NET:
        assert f"pid {os.getpid()} (" in str(info.value)
    validate_ports_free({free: "node0 p2p"})


def fake_proc(root: Path, port: int, inode: int, pid: int, state: str = "0A") -> Path:
    """A /proc with one TCP socket on 127.0.0.1:`port` held (fd 7) by `pid`."""
    (root / "net").mkdir(parents=True)
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    row = (f"   0: 0100007F:{port:04X} 00000000:0000 {state} 00000000:00000000 00:00000000 00000000  "
           f"1000        0 {inode} 1 0000000000000000 100 0 0 10 0\n")
    (root / "net" / "tcp").write_text(header + row)
    (root / "net" / "tcp6").write_text(header)
    (root / str(pid) / "fd").mkdir(parents=True)
    (root / str(pid) / "cmdline").write_bytes(b"blyan\0node\0run\0--data-dir\0/tmp/x\0")
    os.symlink(f"socket:[{inode}]", root / str(pid) / "fd" / "7")
    os.symlink("/dev/null", root / str(pid) / "fd" / "0")
    (root / "self").mkdir()  # not a pid: skipped
    return root


def test_holder_from_proc_tables(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path / "proc", 30400, 424242, 4321)
    assert find_port_holder(30400, proc) == PortHolder(4321, "blyan node run --data-dir /tmp/x")
    assert find_port_holder(30401, proc) is None


def test_holder_unknown_without_proc(tmp_path: Path) -> None:
    assert find_port_holder(30400, tmp_path / "no-proc") is None
