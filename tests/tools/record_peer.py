#!/usr/bin/env python3
"""Records vhost-user transcripts of real third-party peers (a tool, not a test).

    tests/tools/record_peer.py [--out DIR] [--qsd PATH] [--qsd-tag TAG] qsd|dpdk-backend|dpdk-frontend|all

- qsd:           we are a minimal front-end against qemu-storage-daemon's vhost-user-blk export
                 (handshake with and without NEED_REPLY, then malformed messages, one fresh
                 daemon per scenario).
- dpdk-backend:  we are a minimal back-end; DPDK testpmd's net_virtio_user (a front-end)
                 connects to us, split and packed; we record everything it sends until its
                 rings start, then SIGINT it and record the shutdown too.
- dpdk-frontend: we are a minimal front-end against testpmd's net_vhost back-end.

Transcript format (one file per scenario, text, one message per line):

    # comment (peer, version, command line, scenario)
    > fds=N HHHHHHHH FFFFFFFF SSSSSSSS PAYLOAD | annotation     (we sent)
    < fds=N HHHHHHHH FFFFFFFF SSSSSSSS PAYLOAD | annotation     (the peer sent)
    ! event                                                     (timeout, EOF, ...)

The hex before `|` is the exact byte stream of the message: the 12-byte header as three
4-byte groups (request, flags, size; native = little-endian), then the payload as one group
(absent when empty). fds=N is the number of SCM_RIGHTS fds that came (or went) with it.
"""

import argparse
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

HDR = struct.Struct("<III")
VERSION = 0x1
REPLY = 0x4
NEED_REPLY = 0x8

FRONTEND_REQ = {
    1: "GET_FEATURES", 2: "SET_FEATURES", 3: "SET_OWNER", 4: "RESET_OWNER", 5: "SET_MEM_TABLE",
    6: "SET_LOG_BASE", 7: "SET_LOG_FD", 8: "SET_VRING_NUM", 9: "SET_VRING_ADDR",
    10: "SET_VRING_BASE", 11: "GET_VRING_BASE", 12: "SET_VRING_KICK", 13: "SET_VRING_CALL",
    14: "SET_VRING_ERR", 15: "GET_PROTOCOL_FEATURES", 16: "SET_PROTOCOL_FEATURES",
    17: "GET_QUEUE_NUM", 18: "SET_VRING_ENABLE", 19: "SEND_RARP", 20: "NET_SET_MTU",
    21: "SET_BACKEND_REQ_FD", 22: "IOTLB_MSG", 23: "SET_VRING_ENDIAN", 24: "GET_CONFIG",
    25: "SET_CONFIG", 26: "CREATE_CRYPTO_SESSION", 27: "CLOSE_CRYPTO_SESSION",
    28: "POSTCOPY_ADVISE", 29: "POSTCOPY_LISTEN", 30: "POSTCOPY_END", 31: "GET_INFLIGHT_FD",
    32: "SET_INFLIGHT_FD", 33: "GPU_SET_SOCKET", 34: "RESET_DEVICE", 35: "VRING_KICK",
    36: "GET_MAX_MEM_SLOTS", 37: "ADD_MEM_REG", 38: "REM_MEM_REG", 39: "SET_STATUS",
    40: "GET_STATUS", 41: "GET_SHARED_OBJECT", 42: "SET_DEVICE_STATE_FD",
    43: "CHECK_DEVICE_STATE", 44: "GET_SHMEM_CONFIG",
}

PROTO_BITS = [
    "MQ", "LOG_SHMFD", "RARP", "REPLY_ACK", "MTU", "BACKEND_REQ", "CROSS_ENDIAN",
    "CRYPTO_SESSION", "PAGEFAULT", "CONFIG", "BACKEND_SEND_FD", "HOST_NOTIFIER",
    "INFLIGHT_SHMFD", "RESET_DEVICE", "INBAND_NOTIFICATIONS", "CONFIGURE_MEM_SLOTS", "STATUS",
    "XEN_MMAP", "SHARED_OBJECT", "DEVICE_STATE", "GET_VRING_BASE_INFLIGHT", "GPA_ADDRESSES",
    "SHMEM",
]
P = {n: 1 << i for i, n in enumerate(PROTO_BITS)}

VIRTIO_BITS = {
    # transport / vhost
    24: "NOTIFY_ON_EMPTY", 26: "LOG_ALL", 27: "ANY_LAYOUT", 28: "RING_INDIRECT_DESC",
    29: "RING_EVENT_IDX", 30: "PROTOCOL_FEATURES", 32: "VERSION_1", 33: "ACCESS_PLATFORM",
    34: "RING_PACKED", 35: "IN_ORDER", 36: "ORDER_PLATFORM", 37: "SR_IOV",
    38: "NOTIFICATION_DATA", 39: "NOTIF_CONFIG_DATA", 40: "RING_RESET",
}
BLK_BITS = {
    1: "BLK_SIZE_MAX", 2: "BLK_SEG_MAX", 4: "BLK_GEOMETRY", 5: "BLK_RO", 6: "BLK_BLK_SIZE",
    7: "BLK_SCSI", 9: "BLK_FLUSH", 10: "BLK_TOPOLOGY", 11: "BLK_CONFIG_WCE", 12: "BLK_MQ",
    13: "BLK_DISCARD", 14: "BLK_WRITE_ZEROES", 15: "BLK_LIFETIME", 16: "BLK_SECURE_ERASE",
    17: "BLK_ZONED",
}
NET_BITS = {
    0: "NET_CSUM", 1: "NET_GUEST_CSUM", 2: "NET_CTRL_GUEST_OFFLOADS", 3: "NET_MTU", 5: "NET_MAC",
    6: "NET_GSO", 7: "NET_GUEST_TSO4", 8: "NET_GUEST_TSO6", 9: "NET_GUEST_ECN",
    10: "NET_GUEST_UFO", 11: "NET_HOST_TSO4", 12: "NET_HOST_TSO6", 13: "NET_HOST_ECN",
    14: "NET_HOST_UFO", 15: "NET_MRG_RXBUF", 16: "NET_STATUS", 17: "NET_CTRL_VQ",
    18: "NET_CTRL_RX", 19: "NET_CTRL_VLAN", 20: "NET_CTRL_RX_EXTRA", 21: "NET_GUEST_ANNOUNCE",
    22: "NET_MQ", 23: "NET_CTRL_MAC_ADDR", 41: "NET_GUEST_USO4", 42: "NET_GUEST_USO6",
    54: "NET_HOST_USO", 55: "NET_HASH_REPORT", 56: "NET_GUEST_HDRLEN", 57: "NET_RSS",
    58: "NET_RSC_EXT", 59: "NET_STANDBY", 60: "NET_SPEED_DUPLEX",
}


def bit(n):
    return 1 << n


def feature_names(v, device_bits):
    names = []
    for i in range(64):
        if v & (1 << i):
            names.append(VIRTIO_BITS.get(i) or device_bits.get(i) or f"bit{i}")
    return "|".join(names)


def proto_names(v):
    return "|".join(PROTO_BITS[i] if i < len(PROTO_BITS) else f"bit{i}"
                    for i in range(64) if v & (1 << i))


def u64(b):
    return struct.unpack("<Q", b[:8])[0] if len(b) >= 8 else None


class Transcript:
    """Collects lines of one scenario and writes them to a file."""

    def __init__(self, path, header_lines, device_bits):
        self.path = path
        self.lines = [f"# {line}" if line else "#" for line in header_lines]
        self.device_bits = device_bits

    def comment(self, text):
        self.lines.append(f"# {text}")

    def event(self, text):
        self.lines.append(f"! {text}")

    def message(self, direction, raw, nfds, note=""):
        hexes = [raw[0:4].hex(), raw[4:8].hex(), raw[8:12].hex()]
        if len(raw) > 12:
            hexes.append(raw[12:].hex())
        ann = annotate(raw, self.device_bits)
        if note:
            ann = f"{ann}  ({note})" if ann else f"({note})"
        self.lines.append(f"{direction} fds={nfds} {' '.join(hexes)} | {ann}")

    def save(self):
        with open(self.path, "w") as f:
            f.write("\n".join(self.lines) + "\n")
        print(f"wrote {self.path} ({len(self.lines)} lines)", file=sys.stderr)


def annotate(raw, device_bits):
    if len(raw) < 12:
        return f"short header ({len(raw)} bytes)"
    code, flags, size = HDR.unpack(raw[:12])
    pl = raw[12:]
    name = FRONTEND_REQ.get(code, f"UNKNOWN_{code}")
    parts = [f"{name} flags={flags:#x} size={size}"]
    if size != len(pl):
        parts.append(f"actual_payload={len(pl)}")
    is_reply = bool(flags & REPLY)
    v = u64(pl) if len(pl) == 8 else None
    if is_reply and code in (2, 3, 4, 8, 9, 10, 12, 13, 14, 16, 18, 39) and v is not None:
        parts.append(f"ack u64={v:#x}")
    elif code in (1, 2) and v is not None:
        parts.append(f"u64={v:#x} [{feature_names(v, device_bits)}]")
    elif code in (15, 16) and v is not None:
        parts.append(f"u64={v:#x} [{proto_names(v)}]")
    elif code in (8, 10, 11, 18, 23) and len(pl) == 8:
        idx, num = struct.unpack("<II", pl)
        parts.append(f"index={idx} num={num:#x}")
    elif code in (12, 13, 14) and v is not None:
        parts.append(f"index={v & 0xff} nofd={bool(v & 0x100)}")
    elif code == 9 and len(pl) == 40:
        idx, fl, desc, used, avail, log = struct.unpack("<IIQQQQ", pl)
        parts.append(f"index={idx} flags={fl:#x} desc={desc:#x} used={used:#x} "
                     f"avail={avail:#x} log={log:#x}")
    elif code == 5 and len(pl) >= 8:
        n = struct.unpack("<I", pl[:4])[0]
        parts.append(f"regions={n}")
        for i in range(n):
            r = pl[8 + 32 * i: 8 + 32 * (i + 1)]
            if len(r) == 32:
                gpa, sz, ua, off = struct.unpack("<QQQQ", r)
                parts.append(f"[gpa={gpa:#x} size={sz:#x} uaddr={ua:#x} off={off:#x}]")
    elif code in (24, 25) and len(pl) >= 12:
        off, sz, fl = struct.unpack("<III", pl[:12])
        parts.append(f"offset={off} cfg_size={sz} cfg_flags={fl} data={pl[12:].hex() or '-'}")
    elif v is not None and (is_reply or code in (17, 36, 39, 40)):
        parts.append(f"u64={v:#x}")
    return " ".join(parts)


class Conn:
    """One vhost-user connection, recording every message."""

    def __init__(self, sock, tr):
        self.sock = sock
        self.tr = tr
        self.closed = False

    def send_raw(self, raw, fds=(), note=""):
        self.tr.message(">", raw, len(fds), note)
        try:
            if fds:
                self.sock.sendmsg([raw], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                           struct.pack(f"{len(fds)}i", *fds))])
            else:
                self.sock.sendall(raw)
        except OSError as e:
            self.tr.event(f"send failed: {e.strerror or e}")
            self.closed = True

    def send(self, code, flags=VERSION, payload=b"", fds=(), size=None, note=""):
        size = len(payload) if size is None else size
        self.send_raw(HDR.pack(code, flags, size) + payload, fds, note)

    def _recv_exact(self, n, deadline, want_fds):
        buf, fds = b"", []
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                return buf, fds, "timeout"
            self.sock.settimeout(left)
            try:
                if want_fds:
                    data, anc, _flags, _addr = self.sock.recvmsg(
                        n - len(buf), socket.CMSG_SPACE(16 * 4))
                    for level, typ, d in anc:
                        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                            fds.extend(struct.unpack(f"{len(d) // 4}i", d[: len(d) - len(d) % 4]))
                else:
                    data = self.sock.recv(n - len(buf))
            except socket.timeout:
                return buf, fds, "timeout"
            except OSError as e:
                return buf, fds, f"error {e.strerror or e}"
            if not data:
                return buf, fds, "eof"
            buf += data
        return buf, fds, None

    def recv(self, timeout=1.0, note=""):
        """Receives one message; records it. Returns (code, flags, payload, fds) or None."""
        if self.closed:
            return None
        deadline = time.monotonic() + timeout
        hdr, fds, err = self._recv_exact(12, deadline, True)
        if err:
            if hdr:
                self.tr.event(f"partial header {hdr.hex()} then {err}")
            else:
                self.tr.event(f"{err} after {timeout:g} s, no message" if err == "timeout"
                              else f"{err}: peer closed the connection")
            if err != "timeout":
                self.closed = True
            for fd in fds:
                os.close(fd)
            return None
        code, flags, size = HDR.unpack(hdr)
        payload = b""
        if size:
            payload, more, err = self._recv_exact(min(size, 65536), deadline + 1.0, False)
            fds += more
            if err:
                self.tr.message("<", hdr + payload, len(fds), f"payload incomplete: {err}")
                self.closed = err != "timeout"
                for fd in fds:
                    os.close(fd)
                return None
        self.tr.message("<", hdr + payload, len(fds), note)
        for fd in fds:
            os.close(fd)
        return code, flags, payload, len(fds)

    def drain(self, timeout):
        """Records whatever else the peer sends within `timeout`."""
        while self.recv(timeout) is not None:
            pass

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------------------------
# peers as child processes (own process group, always killed)

class Child:
    def __init__(self, argv, log_path):
        self.argv = argv
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGINT, timeout=5.0):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        rc = self.proc.wait()
        self.log.close()
        return rc


def wait_socket(path, child, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return True
        if not child.alive():
            return False
        time.sleep(0.02)
    return False


def connect(path, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def sh_quote(argv):
    return " ".join(a if all(c.isalnum() or c in "-_=.,/:" for c in a) else repr(a) for a in argv)


def pkg_version(pkg):
    try:
        return subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


# --------------------------------------------------------------------------------------------
# front-end against qemu-storage-daemon

# What our front-end would accept of the back-end's protocol features in these transcripts:
# everything the handshake touches, nothing that changes layouts or needs a back-end channel.
FRONTEND_PROTO = P["MQ"] | P["REPLY_ACK"] | P["CONFIG"] | P["CONFIGURE_MEM_SLOTS"] | \
    P["LOG_SHMFD"] | P["INFLIGHT_SHMFD"] | P["RESET_DEVICE"] | P["STATUS"]


def handshake(c, need_reply, config_size=60):
    """GET_FEATURES … GET_CONFIG; with NEED_REPLY on every request when need_reply."""
    nr = NEED_REPLY if need_reply else 0
    f = c.recv_after(1, nr)
    feats = u64(f[2]) if f else 0
    proto = 0
    if feats & bit(30):
        r = c.recv_after(15, nr)
        offered = u64(r[2]) if r else 0
        proto = offered & FRONTEND_PROTO
        c.send(16, VERSION | nr, struct.pack("<Q", proto),
               note=f"offered & ours = {proto_names(proto)}")
        c.drain(0.5)
    if proto & P["MQ"]:
        c.recv_after(17, nr)
    if proto & P["CONFIGURE_MEM_SLOTS"]:
        c.recv_after(36, nr)
    c.send(3, VERSION | nr)
    c.drain(0.5)
    c.recv_after(1, nr, note="second GET_FEATURES, as QEMU sends after SET_OWNER")
    if proto & P["CONFIG"]:
        c.send(24, VERSION | nr, struct.pack("<III", 0, config_size, 0) + bytes(config_size))
        c.drain(0.5)
    if proto & P["STATUS"]:
        c.recv_after(40, nr)
    return feats, proto


def _recv_after(self, code, flags_extra=0, payload=b"", note=""):
    self.send(code, VERSION | flags_extra, payload, note=note)
    first = self.recv(1.0)
    # With NEED_REPLY a peer might send a second message (an ack after the reply): record it.
    if flags_extra & NEED_REPLY:
        self.drain(0.3)
    return first


Conn.recv_after = _recv_after

# Malformed or unusual inputs: (name, description, function(conn)). Each runs on a fresh
# daemon after a plain GET_FEATURES / GET_PROTOCOL_FEATURES / SET_PROTOCOL_FEATURES /
# SET_OWNER prefix (except where noted), then probes with GET_FEATURES whether the
# connection is still served.


def _m_unknown(c):
    c.send(99, note="unknown request code, no NEED_REPLY")


def _m_unknown_nr(c):
    c.send(99, VERSION | NEED_REPLY, note="unknown request code with NEED_REPLY")


def _m_version0(c):
    c.send(1, 0x0, note="GET_FEATURES with version bits 0")


def _m_version2(c):
    c.send(1, 0x2, note="GET_FEATURES with version bits 2")


def _m_reserved(c):
    c.send(1, VERSION | 0x100, note="GET_FEATURES with reserved flag bit 8 set")


def _m_reply_flag(c):
    c.send(1, VERSION | REPLY, note="GET_FEATURES with the REPLY flag set")


def _m_get_features_payload(c):
    c.send(1, payload=struct.pack("<Q", 0xdead), note="GET_FEATURES with an 8-byte payload")


def _m_short_u64(c):
    c.send(2, VERSION | NEED_REPLY, payload=b"\x00\x00\x00\x01",
           note="SET_FEATURES with a 4-byte payload, NEED_REPLY")


def _m_oversize(c):
    c.send(1, payload=bytes(300), note="GET_FEATURES with a 300-byte payload (> 268 union)")


def _m_huge_size(c):
    c.send(1, size=0x10000, note="GET_FEATURES header claiming 65536 bytes, none sent")


def _m_config_too_big(c):
    c.send(24, payload=struct.pack("<III", 0, 300, 0) + bytes(300),
           note="GET_CONFIG size 300 (> 256)")


def _m_config_offset(c):
    c.send(24, payload=struct.pack("<III", 0x100, 8, 0) + bytes(8),
           note="GET_CONFIG offset 256 size 8 (beyond the blk config)")


def _m_config_mismatch(c):
    c.send(24, payload=struct.pack("<III", 0, 60, 0) + bytes(8),
           note="GET_CONFIG claiming 60 config bytes but carrying 8")


def _m_vring_oob(c):
    c.send(11, payload=struct.pack("<II", 5, 0),
           note="GET_VRING_BASE for vring 5 (the export has 2 queues)")


def _m_vring_num_oob(c):
    c.send(8, VERSION | NEED_REPLY, payload=struct.pack("<II", 200, 256),
           note="SET_VRING_NUM for vring 200, NEED_REPLY")


def _m_kick_no_fd(c):
    c.send(12, VERSION | NEED_REPLY, payload=struct.pack("<Q", 0),
           note="SET_VRING_KICK vring 0 without the nofd bit and without an fd, NEED_REPLY")


def _m_mem_table_no_fd(c):
    pl = struct.pack("<II", 1, 0) + struct.pack("<QQQQ", 0, 0x100000, 0x7f0000000000, 0)
    c.send(5, VERSION | NEED_REPLY, pl, note="SET_MEM_TABLE with 1 region but no fd, NEED_REPLY")


def _m_unexpected_fd(c):
    r, w = os.pipe()
    try:
        c.send(1, fds=(r,), note="GET_FEATURES carrying an unexpected fd")
    finally:
        os.close(r)
        os.close(w)


def _m_partial_header(c):
    c.send_raw(HDR.pack(1, VERSION, 0)[:6], note="first 6 bytes of a GET_FEATURES header")
    c.recv(1.0)
    c.send_raw(HDR.pack(1, VERSION, 0)[6:], note="the other 6 bytes, 1 s later")


def _m_set_vring_before_owner(c):
    c.send(8, VERSION | NEED_REPLY, payload=struct.pack("<II", 0, 256),
           note="SET_VRING_NUM vring 0 before SET_OWNER, NEED_REPLY")


def _m_proto_unoffered(c):
    c.send(16, VERSION | NEED_REPLY, payload=struct.pack("<Q", (1 << 63) | P["MQ"]),
           note="SET_PROTOCOL_FEATURES with an unoffered bit 63, NEED_REPLY")


def _m_set_features_unoffered(c):
    c.send(2, VERSION | NEED_REPLY, payload=struct.pack("<Q", bit(32) | bit(30) | bit(34)),
           note="SET_FEATURES with RING_PACKED (not offered), NEED_REPLY")


def _m_reset_owner(c):
    c.send(4, VERSION | NEED_REPLY, note="RESET_OWNER (deprecated), NEED_REPLY")


MALFORMED = [
    ("unknown-code", _m_unknown, True),
    ("unknown-code-need-reply", _m_unknown_nr, True),
    ("version-0", _m_version0, True),
    ("version-2", _m_version2, True),
    ("reserved-flag", _m_reserved, True),
    ("reply-flag-on-request", _m_reply_flag, True),
    ("get-features-with-payload", _m_get_features_payload, True),
    ("short-u64", _m_short_u64, True),
    ("oversize-payload", _m_oversize, True),
    ("huge-size-no-payload", _m_huge_size, True),
    ("get-config-too-big", _m_config_too_big, True),
    ("get-config-offset", _m_config_offset, True),
    ("get-config-size-mismatch", _m_config_mismatch, True),
    ("get-vring-base-out-of-range", _m_vring_oob, True),
    ("set-vring-num-out-of-range", _m_vring_num_oob, True),
    ("set-vring-kick-missing-fd", _m_kick_no_fd, True),
    ("set-mem-table-missing-fd", _m_mem_table_no_fd, True),
    ("unexpected-fd", _m_unexpected_fd, True),
    ("partial-header", _m_partial_header, True),
    ("set-vring-num-before-owner", _m_set_vring_before_owner, False),
    ("set-protocol-features-unoffered", _m_proto_unoffered, False),
    ("set-features-unoffered", _m_set_features_unoffered, True),
    ("reset-owner", _m_reset_owner, True),
]


def prefix(c, owner=True):
    """GET_FEATURES, GET/SET_PROTOCOL_FEATURES (+REPLY_ACK), SET_OWNER without NEED_REPLY."""
    c.recv_after(1)
    r = c.recv_after(15)
    offered = u64(r[2]) if r else 0
    c.send(16, payload=struct.pack("<Q", offered & FRONTEND_PROTO))
    if owner:
        c.send(3)
    c.drain(0.3)


def probe(c):
    c.comment("probe: is the connection still served?")
    if not c.closed:
        c.recv_after(1)
    if not c.closed:
        c.drain(0.3)


Transcript.comment_conn = None
Conn.comment = lambda self, t: self.tr.comment(t)


def run_qsd(out, qsd, tag):
    version = subprocess.run([qsd, "--version"], capture_output=True, text=True,
                             timeout=10).stdout.splitlines()[0]
    with tempfile.TemporaryDirectory(prefix="record-qsd-") as d:
        img = os.path.join(d, "disk.img")
        with open(img, "wb") as f:
            f.truncate(64 << 20)
        sock = os.path.join(d, "vub.sock")
        argv = [qsd,
                "--blockdev", f"driver=file,node-name=file0,filename={img}",
                "--blockdev", "driver=raw,node-name=disk0,file=file0",
                "--export", "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,"
                f"addr.path={sock},writable=on,num-queues=2"]
        shown = sh_quote(argv).replace(d, "$DIR")
        header = ["peer: qemu-storage-daemon (vhost-user-blk export, back-end); we are the front-end",
                  f"version: {version}",
                  "image: 64 MiB raw (sparse file)",
                  f"command: {shown}"]

        def scenario(name, body, note):
            path = os.path.join(out, f"qsd-{tag}-{name}.txt")
            tr = Transcript(path, header + [f"scenario: {note}"], BLK_BITS)
            child = Child(argv, os.path.join(d, f"{name}.log"))
            try:
                if not wait_socket(sock, child):
                    tr.event("daemon did not create its socket")
                else:
                    c = Conn(connect(sock), tr)
                    try:
                        body(c)
                    finally:
                        c.close()
                        time.sleep(0.2)
                        tr.comment(f"daemon still running after our close: {child.alive()}")
            finally:
                rc = child.stop(signal.SIGINT)
                tr.comment(f"daemon exit status after SIGINT: {rc}")
                with open(os.path.join(d, f"{name}.log"), "rb") as f:
                    log = f.read().decode(errors="replace").strip()
                for line in log.splitlines()[:10]:
                    tr.comment(f"daemon output: {line}")
                tr.save()
                try:
                    os.unlink(sock)
                except FileNotFoundError:
                    pass

        scenario("handshake", lambda c: handshake(c, False),
                 "handshake without NEED_REPLY: GET_FEATURES, GET/SET_PROTOCOL_FEATURES, "
                 "GET_QUEUE_NUM, GET_MAX_MEM_SLOTS, SET_OWNER, GET_FEATURES, GET_CONFIG(0, 60), "
                 "GET_STATUS when offered")
        scenario("handshake-need-reply", lambda c: handshake(c, True),
                 "the same handshake with NEED_REPLY set on every request (REPLY_ACK is "
                 "negotiated by the SET_PROTOCOL_FEATURES that itself carries NEED_REPLY)")

        def reconnect(c):
            prefix(c)
            c.close()
            time.sleep(0.3)
            c2 = Conn(connect(sock), c.tr)
            c.tr.comment("second connection to the same daemon after closing the first")
            try:
                prefix(c2)
                c2.recv_after(1)
            finally:
                c2.close()
        scenario("reconnect", reconnect, "close the connection and connect again")

        for name, fn, owner in MALFORMED:
            def body(c, fn=fn, owner=owner):
                prefix(c, owner)
                c.comment("--- the case ---")
                fn(c)
                c.drain(1.0)
                probe(c)
            scenario(f"malformed-{name}", body, f"malformed: {name} (prefix: GET_FEATURES, "
                     f"GET/SET_PROTOCOL_FEATURES{', SET_OWNER' if owner else ''}; then the case; "
                     "then a GET_FEATURES probe)")


# --------------------------------------------------------------------------------------------
# DPDK testpmd

TESTPMD_TAIL = ["--", "--auto-start", "--forward-mode=txonly", "--stats-period", "3",
                "--nb-cores=1", "--total-num-mbufs=16384"]

OUR_NET_FEATURES = (bit(32) | bit(30) | bit(15) | bit(34) | bit(29) | bit(28) | bit(5) | bit(16)
                    | bit(3) | bit(0) | bit(1) | bit(27))
OUR_NET_PROTO = (P["MQ"] | P["LOG_SHMFD"] | P["REPLY_ACK"] | P["BACKEND_REQ"] | P["CONFIG"]
                 | P["HOST_NOTIFIER"] | P["INFLIGHT_SHMFD"] | P["RESET_DEVICE"]
                 | P["CONFIGURE_MEM_SLOTS"] | P["STATUS"])


def net_config(offset, size):
    # virtio_net_config: mac[6], status u16, max_virtqueue_pairs u16, mtu u16, ...
    cfg = bytes.fromhex("525400123456") + struct.pack("<HHH", 1, 1, 1500) + bytes(256)
    return cfg[offset:offset + size]


def serve_backend(c, until):
    """Answers a front-end's requests like a permissive virtio-net back-end."""
    proto = 0
    status = 0
    kicks = set()
    ring_started_at = None
    while time.monotonic() < until and not c.closed:
        m = c.recv(0.5)
        if m is None:
            if ring_started_at and time.monotonic() - ring_started_at > 2.0:
                return "quiet"
            continue
        code, flags, payload, nfds = m
        reply = None
        if code == 1:
            reply = struct.pack("<Q", OUR_NET_FEATURES)
        elif code == 15:
            reply = struct.pack("<Q", OUR_NET_PROTO)
        elif code == 16:
            proto = u64(payload) or 0
        elif code == 17:
            reply = struct.pack("<Q", 1)
        elif code == 36:
            reply = struct.pack("<Q", 32)
        elif code == 40:
            reply = struct.pack("<Q", status)
        elif code == 39:
            status = u64(payload) or 0
        elif code == 11:
            idx = struct.unpack("<I", payload[:4])[0] if len(payload) >= 4 else 0
            reply = struct.pack("<II", idx, 0)
        elif code == 24 and len(payload) >= 12:
            off, sz, fl = struct.unpack("<III", payload[:12])
            data = net_config(off, sz)
            reply = struct.pack("<III", off, len(data), fl) + data
        elif code == 6 and proto & P["LOG_SHMFD"]:
            reply = struct.pack("<Q", 0)
        elif code == 31:
            reply = bytes(24)   # mmap_size 0 and no fd: "no buffer"
        if code == 12 and len(payload) >= 8:
            kicks.add(u64(payload) & 0xff)
            if ring_started_at is None and len(kicks) >= 2:
                ring_started_at = time.monotonic()
        if reply is not None:
            c.send(code, VERSION | REPLY, reply)
        elif flags & NEED_REPLY and proto & P["REPLY_ACK"]:
            c.send(code, VERSION | REPLY, struct.pack("<Q", 0), note="ack")
    return "closed" if c.closed else "deadline"


def run_dpdk_backend(out, testpmd):
    version = pkg_version("dpdk-dev")
    for packed in (False, True):
        tag = "packed" if packed else "split"
        with tempfile.TemporaryDirectory(prefix="record-vu-") as d:
            sock = os.path.join(d, "vhost.sock")
            vdev = f"net_virtio_user0,path={sock},queues=1" + (",packed_vq=1" if packed else "")
            argv = [testpmd, "-l", "0,1", "--main-lcore", "0", "--no-huge", "-m", "256",
                    "--no-pci", "--file-prefix=vu", "--single-file-segments", "--vdev", vdev] \
                + TESTPMD_TAIL
            shown = sh_quote(argv).replace(d, "$DIR")
            path = os.path.join(out, f"dpdk-virtio-user-{tag}.txt")
            tr = Transcript(path, [
                "peer: DPDK testpmd net_virtio_user (front-end, connects); we are the back-end",
                f"version: dpdk-dev {version} (Debian package)",
                f"command: {shown}",
                f"we offer features {OUR_NET_FEATURES:#x} [{feature_names(OUR_NET_FEATURES, NET_BITS)}]",
                f"we offer protocol features {OUR_NET_PROTO:#x} [{proto_names(OUR_NET_PROTO)}]",
                "we answer GET_QUEUE_NUM 1, GET_VRING_BASE 0, GET_CONFIG from mac 52:54:00:12:34:56 "
                "status 1 pairs 1 mtu 1500, GET_STATUS the last SET_STATUS, and ack NEED_REPLY",
                f"scenario: {tag} ring: record until the rings start (2 s quiet after the kicks), "
                "then SIGINT testpmd and record its shutdown"], NET_BITS)
            lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            lsock.bind(sock)
            lsock.listen(1)
            child = Child(argv, os.path.join(d, "testpmd.log"))
            try:
                lsock.settimeout(30)
                try:
                    s, _ = lsock.accept()
                except socket.timeout:
                    tr.event("testpmd did not connect within 30 s")
                    s = None
                if s is not None:
                    c = Conn(s, tr)
                    why = serve_backend(c, time.monotonic() + 30)
                    tr.comment(f"--- rings started ({why}); SIGINT to testpmd ---")
                    os.killpg(child.proc.pid, signal.SIGINT)
                    serve_backend(c, time.monotonic() + 8)
                    tr.comment(f"connection closed by testpmd: {c.closed}")
                    c.close()
            finally:
                rc = child.stop(signal.SIGINT)
                lsock.close()
                tr.comment(f"testpmd exit status: {rc}")
                with open(os.path.join(d, "testpmd.log"), "rb") as f:
                    log = f.read().decode(errors="replace").splitlines()
                for line in [x for x in log if "VHOST" in x or "virtio" in x.lower()][:25]:
                    tr.comment(f"testpmd output: {line.replace(d, '$DIR')}")
                tr.save()


def run_dpdk_frontend(out, testpmd):
    version = pkg_version("dpdk-dev")
    with tempfile.TemporaryDirectory(prefix="record-vh-") as d:
        sock = os.path.join(d, "vhost.sock")
        argv = [testpmd, "-l", "0,1", "--main-lcore", "1", "--no-huge", "-m", "256", "--no-pci",
                "--file-prefix=vh", "--vdev", f"net_vhost0,iface={sock},queues=1", "--",
                "--auto-start", "--forward-mode=rxonly", "--stats-period", "3", "--nb-cores=1",
                "--total-num-mbufs=16384"]
        shown = sh_quote(argv).replace(d, "$DIR")
        header = ["peer: DPDK testpmd net_vhost (vhost library, back-end, listens); we are the front-end",
                  f"version: dpdk-dev {version} (Debian package)",
                  f"command: {shown}"]

        child = Child(argv, os.path.join(d, "testpmd.log"))
        try:
            if not wait_socket(sock, child, 30):
                raise RuntimeError("testpmd did not create its socket")
            time.sleep(0.5)

            def scenario(name, body, note):
                tr = Transcript(os.path.join(out, f"dpdk-vhost-{name}.txt"),
                                header + [f"scenario: {note}"], NET_BITS)
                c = Conn(connect(sock), tr)
                try:
                    body(c)
                finally:
                    c.close()
                    time.sleep(0.5)
                    tr.comment(f"testpmd still running after our close: {child.alive()}")
                    tr.save()

            scenario("handshake", lambda c: handshake(c, False, 12),
                     "handshake without NEED_REPLY (GET_CONFIG size 12 if CONFIG offered)")
            scenario("handshake-need-reply", lambda c: handshake(c, True, 12),
                     "the same handshake with NEED_REPLY on every request")
            for name, fn, owner in MALFORMED:
                if name in ("partial-header",):
                    continue

                def body(c, fn=fn, owner=owner):
                    prefix(c, owner)
                    c.comment("--- the case ---")
                    fn(c)
                    c.drain(1.0)
                    probe(c)
                if not child.alive():
                    break
                scenario(f"malformed-{name}", body,
                         f"malformed: {name} (one testpmd for all scenarios, a new connection each; "
                         "then a GET_FEATURES probe)")
        finally:
            rc = child.stop(signal.SIGINT)
            print(f"testpmd exit status {rc}", file=sys.stderr)
            with open(os.path.join(d, "testpmd.log"), "rb") as f:
                log = f.read().decode(errors="replace")
            keep = [x for x in log.splitlines() if "VHOST" in x or "vhost" in x]
            with open(os.path.join(out, "dpdk-vhost-testpmd.log"), "w") as f:
                f.write("\n".join(keep).replace(d, "$DIR") + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["qsd", "dpdk-backend", "dpdk-frontend", "all"])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                   "..", "data", "transcripts"))
    ap.add_argument("--qsd", default="qemu-storage-daemon")
    ap.add_argument("--qsd-tag", default=None, help="version tag in file names, e.g. 7.2")
    ap.add_argument("--testpmd", default="dpdk-testpmd")
    a = ap.parse_args()
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    if a.what in ("qsd", "all"):
        tag = a.qsd_tag
        if tag is None:
            v = subprocess.run([a.qsd, "--version"], capture_output=True, text=True).stdout.split()
            tag = ".".join(v[2].split(".")[:2]) if len(v) > 2 else "x"
        run_qsd(out, a.qsd, tag)
    if a.what in ("dpdk-backend", "all"):
        run_dpdk_backend(out, a.testpmd)
    if a.what in ("dpdk-frontend", "all"):
        run_dpdk_frontend(out, a.testpmd)


if __name__ == "__main__":
    main()
