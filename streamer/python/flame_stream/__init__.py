"""Python client of flame-stream: the same protocol as the Rust client (streamer/src/protocol.rs, v1).

    from flame_stream import Client
    client = Client("unix:///tmp/flame.sock", open("job.toml").read(), rank=0, world_size=8)
    for step in range(start_step, steps):
        for micro_step in range(client.micro_steps):
            batch = client.micro_batch(step, micro_step)   # batch.tokens: int64 [B, seq_len]

`Batch.cu_seqlens` holds one int32 array per sample (flame's varlen boundaries). On the server's host,
`Client("unix://...", ..., shared_memory=4)` takes batches from a shared-memory ring of 4 slots instead
of the socket (the ring's descriptor comes over the Unix socket; tokens are read from the mapping).
With torch installed,
`FlameStreamDataset` is an `IterableDataset` yielding flame's batch dicts. Only numpy is required.
The client reconnects with backoff when the connection drops and asks again for the same batch; a
batch is a pure function of (job, step, micro-step, rank, world size), so nothing is lost or repeated.
"""

import mmap
import socket
import struct
import time
from dataclasses import dataclass

import numpy as np

VERSION = 1
MAGIC = b"FLMS"
MAX_FRAME = 1 << 30
_HELLO, _WELCOME, _REQUEST, _BATCH, _ERROR = 1, 2, 3, 4, 5
_SHM_OPEN, _SHM_READY, _SLOT, _RELEASE = 6, 7, 8, 9
_SLOT_MAGIC = b"FLSB"


class ServerError(RuntimeError):
    """The server refused: its Error frame, or a protocol violation."""


@dataclass
class Batch:
    """One rank's micro-batch."""

    step: int
    micro_step: int
    datasets: np.ndarray  # int32 [B]: each sample's dataset index in the job
    indices: np.ndarray  # int64 [B]: each sample's global index
    tokens: np.ndarray  # int64 [B, seq_len]
    cu_seqlens: list  # B int32 arrays


def _frame(kind, payload):
    return struct.pack("<IB", len(payload) + 1, kind) + payload


def _bytes(b):
    return struct.pack("<I", len(b)) + b


class _Reader:
    def __init__(self, data):
        self.data, self.at = data, 0

    def take(self, n):
        if self.at + n > len(self.data):
            raise ServerError(f"malformed frame: needs {n} more bytes")
        out = self.data[self.at:self.at + n]
        self.at += n
        return out

    def unpack(self, fmt):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def string(self):
        (n,) = self.unpack("<I")
        return self.take(n).decode("utf-8")

    def u32s(self):
        (n,) = self.unpack("<I")
        return np.frombuffer(self.take(4 * n), dtype="<u4")


def parse_endpoint(endpoint):
    if endpoint.startswith("unix://"):
        return socket.AF_UNIX, endpoint[len("unix://"):]
    if endpoint.startswith("tcp://"):
        host, _, port = endpoint[len("tcp://"):].rpartition(":")
        return socket.AF_INET, (host, int(port))
    raise ValueError(f"{endpoint!r}: expected tcp://HOST:PORT or unix:///PATH")


class Client:
    """One rank of one job, connected to flame-stream."""

    def __init__(self, endpoint, job_toml, rank=0, world_size=1, token=None, retries=8, shared_memory=None):
        self.endpoint, self.retries = endpoint, retries
        if shared_memory is not None and not endpoint.startswith("unix://"):
            raise ValueError(f"{endpoint}: shared memory needs a unix:// endpoint")
        self.shared_memory, self._ring, self._held = shared_memory, None, None
        self._hello = _frame(_HELLO, MAGIC + struct.pack("<H", VERSION) + _bytes((token or "").encode())
                             + _bytes(job_toml.encode()) + struct.pack("<II", rank, world_size))
        self._sock, self._buf = None, b""
        self.fingerprint, self.seq_len, self.micro_steps = None, None, None
        self._connect()

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._ring is not None:
            self._ring.close()
            self._ring, self._held = None, None

    def _open_ring(self):
        """ShmOpen, then ShmReady with the ring's descriptor (SCM_RIGHTS); maps it read-only."""
        self._sock.sendall(_frame(_SHM_OPEN, struct.pack("<I", self.shared_memory)))
        fd = None
        while len(self._buf) < 4 or len(self._buf) < 4 + struct.unpack_from("<I", self._buf)[0]:
            data, fds, _flags, _addr = socket.recv_fds(self._sock, 1 << 16, 1)
            if not data:
                raise ConnectionError("the server closed the connection")
            self._buf += data
            if fds and fd is None:
                fd = fds[0]
        kind, r = self._read_frame()
        if kind == _ERROR:
            raise ServerError(r.string())
        if kind != _SHM_READY or fd is None:
            raise ServerError(f"expected ShmReady with a descriptor, got kind {kind}")
        slots, slot_bytes = r.unpack("<IQ")
        try:
            self._ring = mmap.mmap(fd, slots * slot_bytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        finally:
            import os
            os.close(fd)
        self._slot_bytes = slot_bytes

    def _read_slot(self, slot, size):
        """The micro-batch in `slot` (see streamer/src/shm.rs for the layout), copied out of the ring."""
        base = slot * self._slot_bytes
        ring = self._ring
        if size < 32 or ring[base:base + 4] != _SLOT_MAGIC:
            raise ServerError(f"slot {slot}: no FLSB header")
        samples, step, micro_step, per_sample, cu_total = struct.unpack_from("<IQQII", ring, base + 4)
        if 32 + samples * (16 + 4 * per_sample) + 4 * cu_total > size:
            raise ServerError(f"slot {slot}: counts exceed its {size} bytes")
        entries = np.frombuffer(ring, dtype=np.dtype([("index", "<u8"), ("dataset", "<u4"), ("cu", "<u4")]),
                                count=samples, offset=base + 32)
        at = base + 32 + 16 * samples
        tokens = np.frombuffer(ring, dtype="<u4", count=samples * per_sample, offset=at)
        at += 4 * samples * per_sample
        cu_all = np.frombuffer(ring, dtype="<u4", count=cu_total, offset=at).astype(np.int32)
        bounds = np.concatenate([[0], np.cumsum(entries["cu"])]).astype(np.int64)
        return Batch(step, micro_step, entries["dataset"].astype(np.int32), entries["index"].astype(np.int64),
                     tokens.reshape(samples, per_sample).astype(np.int64),
                     [cu_all[bounds[i]:bounds[i + 1]] for i in range(samples)])

    def _read_frame(self):
        while True:
            if len(self._buf) >= 4:
                (n,) = struct.unpack_from("<I", self._buf)
                if n > MAX_FRAME or n == 0:
                    raise ServerError(f"malformed frame of {n} bytes")
                if len(self._buf) >= 4 + n:
                    frame, self._buf = self._buf[4:4 + n], self._buf[4 + n:]
                    return frame[0], _Reader(frame[1:])
            chunk = self._sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self._buf += chunk

    def _connect(self):
        delay, last = 0.05, None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            try:
                family, address = parse_endpoint(self.endpoint)
                self._sock, self._buf = socket.socket(family, socket.SOCK_STREAM), b""
                self._sock.connect(address)
                self._sock.sendall(self._hello)
                kind, r = self._read_frame()
            except OSError as e:
                self.close()
                last = e
                continue
            if kind == _ERROR:
                message = r.string()
                self.close()
                raise ServerError(message)
            if kind != _WELCOME:
                raise ServerError(f"expected Welcome, got kind {kind}")
            _version = r.unpack("<H")
            self.fingerprint = r.string()
            self.seq_len, self.micro_steps = r.unpack("<II")
            if self.shared_memory is not None:
                self._open_ring()
            return
        raise ConnectionError(f"{self.endpoint}: {last}")

    def micro_batch(self, step, micro_step):
        """This rank's samples at (step, micro_step)."""
        request = _frame(_REQUEST, struct.pack("<QQ", step, micro_step))
        while True:
            if self._sock is None:
                self._connect()
            try:
                release = b""
                if self._held is not None:
                    # The last batch was copied out of its slot: give the slot back.
                    release, self._held = _frame(_RELEASE, struct.pack("<I", self._held)), None
                self._sock.sendall(release + request)
                kind, r = self._read_frame()
            except OSError:
                self.close()
                continue
            if kind == _ERROR:
                raise ServerError(r.string())
            if kind == _SLOT and self._ring is not None:
                _step, _micro, slot, size = r.unpack("<QQIQ")
                self._held = slot
                return self._read_slot(slot, size)
            if kind != _BATCH:
                raise ServerError(f"expected Batch, got kind {kind}")
            got_step, got_micro = r.unpack("<QQ")
            (count,) = r.unpack("<I")
            datasets, indices, tokens, cu_seqlens = [], [], [], []
            for _ in range(count):
                dataset, index = r.unpack("<IQ")
                datasets.append(dataset)
                indices.append(index)
                cu_seqlens.append(r.u32s().astype(np.int32))
                tokens.append(r.u32s().astype(np.int64))
            return Batch(got_step, got_micro, np.array(datasets, dtype=np.int32), np.array(indices, dtype=np.int64),
                         np.stack(tokens) if tokens else np.zeros((0, self.seq_len), np.int64), cu_seqlens)


try:
    import torch
    from torch.utils.data import IterableDataset
except ImportError:  # numpy-only installs
    torch = None

if torch is not None:

    class FlameStreamDataset(IterableDataset):
        """flame's batches from flame-stream, from `start_step` on: dicts with `input_ids`, `labels`
        (int64 [B, seq_len]) and, for varlen jobs with B = 1, `cu_seqlens` (int32 [n + 1])."""

        def __init__(self, endpoint, job_toml, rank=0, world_size=1, start_step=0, token=None,
                     shared_memory=None):
            super().__init__()
            self.args = (endpoint, job_toml, rank, world_size, token, shared_memory)
            self.start_step = start_step

        def __iter__(self):
            endpoint, job, rank, world, token, shared_memory = self.args
            client = Client(endpoint, job, rank, world, token, shared_memory=shared_memory)
            step = self.start_step
            while True:
                for micro in range(client.micro_steps):
                    batch = client.micro_batch(step, micro)
                    ids = torch.from_numpy(batch.tokens)
                    item = {"input_ids": ids, "labels": ids.clone()}
                    if len(batch.cu_seqlens) == 1:
                        item["cu_seqlens"] = torch.from_numpy(batch.cu_seqlens[0])
                    yield item
                step += 1
