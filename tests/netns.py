"""Linux network namespaces on one bridge, and a raw-socket capture of the bridge, for test_netns.py.

``bridged_namespaces`` builds the smallest "several hosts" a single machine can offer without
Docker: one network namespace per host, each with its own veth link into a bridge of the root
namespace, which carries an address too (the test process talks to the hosts from there)::

    root namespace: bridge efw<pid>br 10.213.N.254/24
      +-- veth efw<pid>v1 <-> eth0 10.213.N.1/24 in namespace efw<pid>a
      +-- veth efw<pid>v2 <-> eth0 10.213.N.2/24 in namespace efw<pid>b
      +-- ...

``BridgeCapture`` records every frame crossing the bridge with an ``AF_PACKET`` socket (no tcpdump
needed) and reassembles the TCP byte stream of each direction of each connection from its SYN.
Everything here needs root (CAP_SYS_ADMIN for namespaces, CAP_NET_ADMIN/CAP_NET_RAW for links and
the capture); ``unavailable()`` says what is missing so a test can skip with that reason.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

#: Namespace and link names are ``efw<pid><suffix>`` (interface names stay under 16 characters).
PREFIX = "efw"
#: The /16 the bridges' /24s are taken from (private, and unlikely to be routed on a CI machine).
SUBNET16 = "10.213"
BRIDGE_HOST = 254  # the bridge's own address in its /24: the root namespace's side
NO_NETNS = "cannot create a network namespace (needs CAP_SYS_ADMIN and kernel netns support)"
NO_BRIDGE = "cannot create a bridge (needs CAP_NET_ADMIN and the bridge driver)"
NO_VETH = "cannot create a veth pair (needs CAP_NET_ADMIN and the veth driver)"
_STALE = re.compile(rf"^{PREFIX}(\d+)(?:[a-z]|br|v\d+)$")

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_8021Q = 0x8100
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_STATISTICS = 6
SO_RCVBUFFORCE = 33
TCP_SYN = 0x02
TCP_RST = 0x04

#: TLS record content types: change_cipher_spec, alert, handshake, application_data.
TLS_CONTENT_TYPES = frozenset({0x14, 0x15, 0x16, 0x17})
#: The longest TLS record body (TLS 1.2's ciphertext bound, which covers TLS 1.3's 2^14 + 256).
TLS_MAX_RECORD = 2**14 + 2048


class NetnsSetupError(RuntimeError):
    """An ``ip`` command that builds the topology failed.

    ``missing`` names a capability the machine lacks (a test skips with it); None means the command
    failed although the machine should be able to run it (a test fails).
    """

    def __init__(self, command: list[str], stderr: str, missing: str | None = None) -> None:
        self.missing = missing
        what = f"{missing}: " if missing else ""
        super().__init__(f"{what}`{' '.join(command)}` failed: {stderr.strip() or 'no output'}")


def unavailable() -> str | None:
    """Why namespaces cannot be built here (a skip reason), or None when they can be tried."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to create network namespaces and a bridge"
    if shutil.which("ip") is None:
        return "needs the `ip` command (iproute2) to create network namespaces"
    if not hasattr(socket, "AF_PACKET"):
        return "needs AF_PACKET sockets to capture the bridge"
    return None


def ip(*args: str, missing: str | None = None) -> str:
    """Run ``ip ARGS``; its stdout, or NetnsSetupError (``missing``: what its failure means) on failure."""
    command = ["ip", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise NetnsSetupError(command, done.stderr, missing)
    return done.stdout


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(name: str) -> bool:
    """Whether ``name`` is a namespace or link of an earlier run whose process is gone."""
    m = _STALE.match(name)
    return m is not None and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1)))


def remove_stale() -> list[str]:
    """Delete what a killed earlier run left behind: its namespaces (and what still runs in them), links.

    Only names of this module's pattern (``efw<pid>...``) whose pid no longer runs are touched.
    """
    removed: list[str] = []
    for line in ip("netns", "list").splitlines():
        name = (line.split() or [""])[0]
        if not _stale(name):
            continue
        with contextlib.suppress(NetnsSetupError):
            for pid in ip("netns", "pids", name).split():  # workers orphaned by the killed run
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            ip("netns", "delete", name)
            removed.append(name)
    for line in ip("-o", "link", "show").splitlines():
        parts = line.split(":")
        name = parts[1].strip().split("@")[0] if len(parts) > 1 else ""
        if _stale(name):
            with contextlib.suppress(NetnsSetupError):
                ip("link", "delete", name)
                removed.append(name)
    return removed


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 of 10.213.0.0/16 that no address or route of the root namespace touches."""
    used: list[ipaddress.IPv4Network] = []
    for line in ip("-4", "-o", "addr", "show").splitlines() + ip("-4", "route", "show").splitlines():
        for word in line.split():
            with contextlib.suppress(ValueError):
                if "." in word and word[0].isdigit():
                    used.append(ipaddress.IPv4Network(word, strict=False))
    for third in range(256):
        candidate = ipaddress.IPv4Network(f"{SUBNET16}.{third}.0/24")
        if not any(candidate.overlaps(u) for u in used if u.prefixlen > 0):
            return candidate
    raise NetnsSetupError(["ip", "-4", "addr"], "every /24 is in use", f"a free /24 in {SUBNET16}.0.0/16")


@dataclass(frozen=True)
class Host:
    """One namespace on the bridge: its name and its address."""

    namespace: str
    address: str

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside this host's namespace (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.namespace, *argv]


@dataclass(frozen=True)
class Topology:
    """The bridge, its address in the root namespace, and the hosts behind it."""

    bridge: str
    bridge_address: str
    subnet: ipaddress.IPv4Network
    hosts: list[Host]


@contextlib.contextmanager
def bridged_namespaces(count: int) -> Iterator[Topology]:
    """``count`` namespaces joined by a fresh bridge; all of it deleted on exit, even after a failure.

    Raises:
        NetnsSetupError: the machine cannot build it (``missing`` says why: no namespaces, no bridge
            or veth driver); whatever was built before the failure is deleted first.
    """
    pid = os.getpid()
    bridge = f"{PREFIX}{pid}br"
    created_ns: list[str] = []
    created_links: list[str] = []
    try:
        remove_stale()
        subnet = free_subnet()
        hosts = [Host(f"{PREFIX}{pid}{chr(ord('a') + i)}", str(subnet[i + 1])) for i in range(count)]
        bridge_address = str(subnet[BRIDGE_HOST])
        for h in hosts:
            ip("netns", "add", h.namespace, missing=NO_NETNS)
            created_ns.append(h.namespace)
        ip("link", "add", bridge, "type", "bridge", missing=NO_BRIDGE)
        created_links.append(bridge)
        ip("addr", "add", f"{bridge_address}/{subnet.prefixlen}", "dev", bridge)
        ip("link", "set", bridge, "up")
        for n, h in enumerate(hosts, start=1):
            veth = f"{PREFIX}{pid}v{n}"
            ip(*f"link add {veth} type veth peer name eth0 netns {h.namespace}".split(), missing=NO_VETH)
            created_links.append(veth)
            ip("link", "set", veth, "master", bridge)
            ip("link", "set", veth, "up")
            ip("-n", h.namespace, "addr", "add", f"{h.address}/{subnet.prefixlen}", "dev", "eth0")
            ip("-n", h.namespace, "link", "set", "eth0", "up")
            ip("-n", h.namespace, "link", "set", "lo", "up")
        yield Topology(bridge, bridge_address, subnet, hosts)
    finally:
        # veths first: deleting one end deletes the pair at once (a deleted namespace takes its
        # ends along only later, asynchronously), then the bridge, then the namespaces
        for name in reversed(created_links):
            with contextlib.suppress(NetnsSetupError):
                ip("link", "delete", name)
        for name in created_ns:
            with contextlib.suppress(NetnsSetupError):
                ip("netns", "delete", name)


# ------------------------------------------------------------------------------------------ capture
@dataclass
class Direction:
    """The bytes one end of a TCP connection sent, as captured: segments keyed by sequence number."""

    src: tuple[str, int]
    dst: tuple[str, int]
    isn: int | None = None  # the SYN's sequence number: the stream starts at isn + 1
    segments: dict[int, bytes] = field(default_factory=dict)
    payload_bytes: int = 0  # every payload byte seen (retransmissions and duplicates included)
    packets: int = 0
    resets: int = 0  # segments with RST set

    def add(self, seq: int, flags: int, payload: bytes) -> None:
        """Record one segment."""
        self.packets += 1
        if flags & TCP_RST:
            self.resets += 1
        if flags & TCP_SYN:
            self.isn = seq
        if payload:
            self.payload_bytes += len(payload)
            if len(payload) > len(self.segments.get(seq, b"")):
                self.segments[seq] = payload

    @property
    def refused(self) -> bool:
        """Only resets, no data: the answer of a port nobody listened on yet (a refused SYN)."""
        return self.isn is None and self.packets == self.resets and not self.payload_bytes

    def stream(self) -> tuple[bytes, bool]:
        """The bytes sent from the start of the connection up to the first hole; and whether there is none."""
        if self.isn is None:
            return b"", not self.segments
        start = (self.isn + 1) % 2**32
        parts: list[bytes] = []
        cursor = 0
        for offset, data in sorted(((seq - start) % 2**32, data) for seq, data in self.segments.items()):
            if offset > cursor:
                return b"".join(parts), False
            if offset + len(data) > cursor:
                parts.append(data[cursor - offset :])
                cursor = offset + len(data)
        return b"".join(parts), True


@dataclass(frozen=True)
class TLSCheck:
    """How a byte stream parses as a sequence of TLS records."""

    records: int
    content_types: frozenset[int]
    bytes_checked: int  # the stream bytes covered by well-formed record headers and bodies
    error: str | None  # the first malformed record header, or None


def tls_records(stream: bytes) -> TLSCheck:
    """Walk ``stream`` record by record; every header must be TLS (type 20-23, version 3.x, sane length).

    A last record cut short (the capture stopped in the middle of it) is fine.
    """
    pos = records = 0
    types: set[int] = set()
    while pos + 5 <= len(stream):
        ctype, major, minor = stream[pos], stream[pos + 1], stream[pos + 2]
        length = int.from_bytes(stream[pos + 3 : pos + 5], "big")
        if ctype not in TLS_CONTENT_TYPES or major != 3 or minor not in (1, 3) or length > TLS_MAX_RECORD:
            head = stream[pos : pos + 16]
            return TLSCheck(records, frozenset(types), pos, f"no TLS record at byte {pos}: {head!r}")
        types.add(ctype)
        records += 1
        pos += 5 + length
    return TLSCheck(records, frozenset(types), min(pos, len(stream)), None)


def parse_frame(frame: bytes) -> tuple[tuple[str, int], tuple[str, int], int, int, bytes] | None:
    """An Ethernet frame's IPv4/TCP segment: (src, dst, seq, flags, payload); None if it is not one."""
    if len(frame) < 14:
        return None
    ethertype, offset = struct.unpack_from("!H", frame, 12)[0], 14
    while ethertype == ETH_P_8021Q and len(frame) >= offset + 4:
        ethertype, offset = struct.unpack_from("!H", frame, offset + 2)[0], offset + 4
    if ethertype != ETH_P_IP or len(frame) < offset + 20:
        return None
    version_ihl, proto = frame[offset], frame[offset + 9]
    total_length = struct.unpack_from("!H", frame, offset + 2)[0]
    ihl = (version_ihl & 0x0F) * 4
    if version_ihl >> 4 != 4 or proto != socket.IPPROTO_TCP:
        return None
    # a "BIG TCP" GSO frame (over 64 KiB) says 0 here: the frame's own length counts then
    end = offset + total_length if total_length else len(frame)
    src = socket.inet_ntoa(frame[offset + 12 : offset + 16])
    dst = socket.inet_ntoa(frame[offset + 16 : offset + 20])
    tcp = offset + ihl
    if len(frame) < tcp + 20:
        return None
    sport, dport, seq = struct.unpack_from("!HHI", frame, tcp)
    data_offset, flags = (frame[tcp + 12] >> 4) * 4, frame[tcp + 13]
    return (src, sport), (dst, dport), seq, flags, bytes(frame[tcp + data_offset : min(end, len(frame))])


class BridgeCapture:
    """Every frame crossing a bridge, from an AF_PACKET socket read by a background thread.

    The socket puts the bridge in promiscuous mode (for as long as it is open): only then does a
    bridge pass the frames it forwards between two of its ports up to its own interface, where the
    socket sees them. So host-to-host traffic is seen once, as is traffic to and from the bridge's
    own address.
    """

    def __init__(self, interface: str, buffer_bytes: int = 64 * 1024 * 1024) -> None:
        self.interface = interface
        self.frames: list[bytes] = []
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(ETH_P_ALL))
        try:
            try:  # beyond net.core.rmem_max: needs CAP_NET_ADMIN
                self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, buffer_bytes)
            except PermissionError:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
            self._sock.bind((interface, ETH_P_ALL))
            index = socket.if_nametoindex(interface)
            mreq = struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b"")
            self._sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            self._sock.settimeout(0.2)
        except BaseException:
            self._sock.close()
            raise
        self._thread = threading.Thread(target=self._read, name=f"capture-{interface}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                self.frames.append(self._sock.recv(1 << 18))
        self._sock.setblocking(False)  # what is already queued arrived before stop(): keep it
        with contextlib.suppress(BlockingIOError):
            while True:
                self.frames.append(self._sock.recv(1 << 18))

    def stop(self) -> tuple[int, int]:
        """Stop capturing; the kernel's (frames seen, frames dropped for lack of buffer) counts."""
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(10)
        packets, drops = struct.unpack("II", self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        self._sock.close()
        return packets, drops

    def __enter__(self) -> BridgeCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._sock.fileno() >= 0:
            self.stop()

    def directions(self) -> dict[tuple[tuple[str, int], tuple[str, int]], Direction]:
        """Every TCP (src, dst) direction captured, with its segments."""
        out: dict[tuple[tuple[str, int], tuple[str, int]], Direction] = {}
        for frame in self.frames:
            parsed = parse_frame(frame)
            if parsed is None:
                continue
            src, dst, seq, flags, payload = parsed
            if (src, dst) not in out:
                out[(src, dst)] = Direction(src, dst)
            out[(src, dst)].add(seq, flags, payload)
        return out
