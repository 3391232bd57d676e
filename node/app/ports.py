"""Is a TCP port free on loopback, and if not, which process holds it.

`blyan devnet` checks every port its nodes will listen on before it starts any, so that a port
left taken (by an earlier devnet, say) is reported by number and holder instead of a node dying
at start. The holder is found, where the OS lets us, by matching the port in /proc/net/tcp{,6}
to a socket inode and that inode to a process's open fds (Linux; elsewhere, or for another
user's process, the holder is unknown and only the port is named).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from chain.errors import ConfigError

PROC = Path("/proc")
TCP_LISTEN = "0A"
"""The LISTEN state in /proc/net/tcp."""
MAX_COMMAND_CHARS = 160


@dataclass(frozen=True, slots=True)
class PortHolder:
    pid: int
    """The process holding the port."""
    command: str
    """Its command line (shortened)."""


@dataclass(frozen=True, slots=True)
class BusyPort:
    port: int
    """The TCP port that cannot be bound."""
    role: str
    """What it was meant for, e.g. "node0 rpc"."""
    holder: PortHolder | None
    """Who holds it, when knowable."""

    def describe(self) -> str:
        who = f"pid {self.holder.pid} ({self.holder.command})" if self.holder else "another process"
        return f"port {self.port} ({self.role}) is in use by {who}"


class PortInUse(ConfigError):
    """Ports a node would listen on are taken."""

    def __init__(self, busy: list[BusyPort], hint: str = "") -> None:
        self.busy = busy
        message = "; ".join(b.describe() for b in busy)
        super().__init__(message + (f". {hint}" if hint else ""))


def is_port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a listener could bind `host:port` now (SO_REUSEADDR, as servers bind: a port
    whose last connection lingers in TIME_WAIT counts as free)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def find_port_holder(port: int, proc: Path = PROC) -> PortHolder | None:
    """The process with a TCP socket on local `port` (a listener first), or None if unknown."""
    inodes = _socket_inodes(port, proc)
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]": rank for rank, inode in enumerate(inodes)}
    best: tuple[int, int] | None = None  # (rank of the inode, pid)
    for pid_dir in _pid_dirs(proc):
        try:
            fds = list((pid_dir / "fd").iterdir())
        except OSError:  # gone, or another user's
            continue
        for fd in fds:
            try:
                rank = wanted.get(os.readlink(fd))
            except OSError:
                continue
            if rank is not None and (best is None or rank < best[0]):
                best = (rank, int(pid_dir.name))
    if best is None:
        return None
    return PortHolder(best[1], _command_of(proc / str(best[1])))


def validate_ports_free(ports: dict[int, str], host: str = "127.0.0.1", hint: str = "") -> None:
    """Raise `PortInUse` naming every port of `ports` (port -> role) that cannot be bound."""
    busy = [BusyPort(port, role, find_port_holder(port)) for port, role in ports.items()
            if not is_port_free(port, host)]
    if busy:
        raise PortInUse(busy, hint)


def _socket_inodes(port: int, proc: Path) -> list[int]:
    """Inodes of TCP sockets with local `port`, listeners first."""
    listening, other = [], []
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 10 or ":" not in cols[1]:
                continue
            try:
                local_port, inode = int(cols[1].rsplit(":", 1)[1], 16), int(cols[9])
            except ValueError:
                continue
            if local_port == port and inode:
                (listening if cols[3] == TCP_LISTEN else other).append(inode)
    return listening + other


def _pid_dirs(proc: Path) -> list[Path]:
    try:
        return [p for p in proc.iterdir() if p.name.isdigit()]
    except OSError:
        return []


def _command_of(pid_dir: Path) -> str:
    try:
        raw = (pid_dir / "cmdline").read_bytes()
    except OSError:
        return "?"
    command = " ".join(raw.replace(b"\0", b" ").decode(errors="replace").split()) or "?"
    return command if len(command) <= MAX_COMMAND_CHARS else command[:MAX_COMMAND_CHARS - 3] + "..."
