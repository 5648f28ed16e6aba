"""Python client of flame-stream: the protocol of the Rust clients (streamer/src/protocol.rs, v1) and
their behaviour (streamer/src/client_core.rs: read-ahead, slot release, position checks).

    from flame_stream import Client
    client = Client("unix:///tmp/flame.sock", open("job.toml").read(), rank=0, world_size=8)
    for step in range(start_step, steps):
        for micro_step in range(client.micro_steps):
            batch = client.micro_batch(step, micro_step)   # batch.tokens: int64 [B, seq_len]

`Batch.cu_seqlens` holds one int32 array per sample (flame's varlen boundaries, from 0 to seq_len). On the
server's host, `Client("unix://...", ..., shared_memory=4)` takes batches from a shared-memory ring of 4
slots instead of the socket (the ring's descriptor comes over the Unix socket; tokens are read from the
mapping). With each request the client also sends the request for the micro-batch the caller will ask
for next (the following one in order, or `micro_batch(..., following=(step, micro_step))`; `None` or
`read_ahead=False` for none), when the job has it for every rank, so the server prepares it while the
trainer works; asking for anything else reads that answer and gives its slot back. The job's end is the
last micro-batch every rank has: asking past it raises `EndOfJob` (a `ServerError`), for every job (with
`num_samples` or `epochs`). With Python 3.11 or later the client also reads `num_samples` from the job's
TOML (`tomllib`) and then asks nothing ahead past the end.
While the server prepares the job's raw datasets (a job with `dataset = ...` entries, not streamed), the
client waits, logging the progress the server sends every few seconds (logger `flame_stream`).
The client reconnects with backoff when the connection drops and asks again for the same batch; a
batch is a pure function of (job, step, micro-step, rank, world size), so nothing is lost or repeated.
Only numpy is required.

With torch installed, `FlameStreamDataset` is an `IterableDataset` of flame's batch dicts, one per
micro-batch, in order from `start_step` (each step's `micro_steps` micro-batches), for `steps` steps or to
the job's end (its last micro-batch that every rank has: the server's `EndOfJob`, for a job of `epochs` as
for one of `num_samples`), where iteration stops cleanly; a job with neither never ends. Under `DataLoader(dataset, batch_size=None, num_workers=W)` worker `w` reads the micro-batches at
positions `w, w + W, w + 2W, ...` over its own connection (and ring), reading ahead its own next one, and
the DataLoader, which takes items from its workers in turn, yields exactly the sequence one process
reads, for any W. Each dict has `input_ids` and `labels` (int64, equal: the model shifts) and
`cu_seqlens`, in one of two layouts:
- `layout="flat"` (default): flame's varlen convention for any micro-batch size B: `input_ids` `[1, B*seq_len]`
  (the samples one after the other) and one int32 `cu_seqlens` `[n + 1]` over them, sample i's
  boundaries offset by i*seq_len. For B = 1 this is exactly flame's varlen collation; for a job without
  `varlen` the boundaries are the samples' edges, so attention stays within each sample.
- `layout="per_sample"`: `input_ids` `[B, seq_len]` and `cu_seqlens` a list of B int32 tensors
  `[n_i + 1]`, each from 0 to seq_len.
"""

import logging
import mmap
import os
import socket
import struct
import time
from dataclasses import dataclass

import numpy as np

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11: the job's end is not known here
    tomllib = None

VERSION = 1
MAGIC = b"FLMS"
MAX_FRAME = 1 << 30
_HELLO, _WELCOME, _REQUEST, _BATCH, _ERROR = 1, 2, 3, 4, 5
_SHM_OPEN, _SHM_READY, _SLOT, _RELEASE = 6, 7, 8, 9
_CURSORS, _CURSORS_AT = 10, 11
_PREPARING = 12  # before Welcome: the job waits for a raw dataset's preparation, this far along
_log = logging.getLogger("flame_stream")
_CURSOR = struct.Struct("<I6Q")  # dataset, then a Cursor's window, epoch, file, block, document, offset
_SLOT_MAGIC = b"FLSB"
END_OF_JOB = "end of job: "  # how the server's Error past the job's end starts (streamer/src/protocol.rs)


class ServerError(RuntimeError):
    """The server refused: its Error frame, or a protocol violation."""


class EndOfJob(ServerError):
    """The micro-batch asked for lies past the job's end (some rank's samples are past its `num_samples`, or
    its `epochs`): there is nothing more to read."""


class _Dropped(Exception):
    """The connection is of no further use (the server refused a request made ahead): reconnect."""


_IN_ORDER = object()  # micro_batch's default `following`: the next micro-batch in order


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


def resume_cursors(endpoint, job_toml, step, given=(), token=None, retries=8):
    """For a job that streams raw datasets (`streaming = true`; an empty list otherwise): the cursors a
    trainer's checkpoint keeps to resume at `step`, after giving the server `given`, those of the
    checkpoint being resumed, so that a restarted or fresh server continues without replaying the stream.
    Each cursor is a tuple (dataset, window, epoch, file, block, document, offset), as the server sends it;
    keep them as they are. Runs over a connection of its own (streamer/src/client.rs, `resume_cursors`)."""
    client = Client(endpoint, job_toml, 0, 1, token=token, retries=retries, read_ahead=False)
    try:
        payload = struct.pack("<QI", step, len(given)) + b"".join(_CURSOR.pack(*c) for c in given)
        client._sock.sendall(_frame(_CURSORS, payload))
        kind, r = client._read_frame()
        if kind == _ERROR:
            client._refuse(r.string())
        if kind != _CURSORS_AT:
            client._refuse(f"expected CursorsAt, got kind {kind}")
        at, count = r.unpack("<QI")
        if at != step:
            client._refuse(f"cursors for step {at}, asked for {step}")
        return [r.unpack(_CURSOR.format) for _ in range(count)]
    finally:
        client.close()


def parse_endpoint(endpoint):
    if endpoint.startswith("unix://"):
        return socket.AF_UNIX, endpoint[len("unix://"):]
    if endpoint.startswith("tcp://"):
        host, _, port = endpoint[len("tcp://"):].rpartition(":")
        return socket.AF_INET, (host, int(port))
    raise ValueError(f"{endpoint!r}: expected tcp://HOST:PORT or unix:///PATH")


class Client:
    """One rank of one job, connected to flame-stream."""

    def __init__(self, endpoint, job_toml, rank=0, world_size=1, token=None, retries=8, shared_memory=None,
                 read_ahead=True):
        self.endpoint, self.retries, self.read_ahead = endpoint, retries, read_ahead
        if shared_memory is not None and not endpoint.startswith("unix://"):
            raise ValueError(f"{endpoint}: shared memory needs a unix:// endpoint")
        self.shared_memory, self._ring, self._held = shared_memory, None, None
        self._hello = _frame(_HELLO, MAGIC + struct.pack("<H", VERSION) + _bytes((token or "").encode())
                             + _bytes(job_toml.encode()) + struct.pack("<II", rank, world_size))
        job = tomllib.loads(job_toml) if tomllib is not None else {}
        self._global_batch, self.num_samples = job.get("global_batch_size"), job.get("num_samples")
        self._sock, self._buf, self._ahead = None, b"", None
        self.fingerprint, self.seq_len, self.micro_steps = None, None, None
        self._connect()

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._ahead = None
        if self._ring is not None:
            self._ring.close()
            self._ring, self._held = None, None

    def in_job(self, step, micro_step):
        """Whether the job has the micro-batch at (step, micro_step) for every rank, as far as is known here:
        always when the job has no `num_samples` or it cannot be read (then the server says `EndOfJob`)."""
        if micro_step >= self.micro_steps:
            return False
        if self.num_samples is None or self._global_batch is None:
            return True
        per_micro_step = self._global_batch // self.micro_steps
        return step * self._global_batch + (micro_step + 1) * per_micro_step <= self.num_samples

    def following(self, step, micro_step):
        """The micro-batch after (step, micro_step), in order."""
        return (step + 1, 0) if micro_step + 1 >= self.micro_steps else (step, micro_step + 1)

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
            self._refuse(r.string())
        if kind != _SHM_READY or fd is None:
            self._refuse(f"expected ShmReady with a descriptor, got kind {kind}")
        slots, slot_bytes = r.unpack("<IQ")
        try:
            self._ring = mmap.mmap(fd, slots * slot_bytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        finally:
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
                while kind == _PREPARING:
                    dataset = r.string()
                    done, total = r.unpack("<QQ")
                    _log.info("the server is preparing the job's raw dataset %s: %d of %d input bytes read; "
                              "waiting for it", dataset, done, total)
                    kind, r = self._read_frame()
                if kind == _WELCOME:
                    _version = r.unpack("<H")
                    self.fingerprint = r.string()
                    self.seq_len, self.micro_steps = r.unpack("<II")
                    if self.shared_memory is not None:
                        self._open_ring()
                    return
            except OSError as e:
                self.close()
                last = e
                continue
            if kind == _ERROR:
                self._refuse(r.string())
            self._refuse(f"expected Welcome, got kind {kind}")
        raise ConnectionError(f"{self.endpoint}: {last}")

    def micro_batch(self, step, micro_step, following=_IN_ORDER):
        """This rank's samples at (step, micro_step). `following`, the (step, micro_step) the caller will ask
        for next (default: the next in order; None: nothing), is requested along with it when reading ahead
        is on (and, with shared memory, the ring has 2 slots or more) and the job has it."""
        at = (step, micro_step)
        if following is _IN_ORDER:
            following = self.following(step, micro_step)
        # With one slot, the one the caller holds, nothing can be prepared ahead.
        if (not self.read_ahead or following is None or not self.in_job(*following)
                or (self.shared_memory is not None and self.shared_memory < 2)):
            following = None
        # A server that accepts, then drops the connection before answering, gets as many tries as a
        # server that cannot be reached.
        for _ in range(self.retries + 1):
            if self._sock is None:
                self._connect()
            try:
                return self._exchange(at, following)
            except (OSError, _Dropped):
                # The connection dropped: reconnect and ask again.
                self.close()
        raise ConnectionError(f"{self.endpoint}: the connection dropped {self.retries + 1} times before a "
                              "batch arrived")

    def _exchange(self, at, following):
        """Sends the release of the slot held, the request for `at` unless it was made ahead, and the one
        for `following`; returns the answer for `at`."""
        out = b""
        if self._held is not None:
            # The last batch was copied out of its slot: give the slot back.
            out, self._held = _frame(_RELEASE, struct.pack("<I", self._held)), None
        if self._ahead is not None and self._ahead != at:
            # Asked ahead for something else: its answer comes first; read it and give its slot back.
            self._sock.sendall(out)
            out, self._ahead = b"", None
            kind, r = self._read_frame()
            if kind == _SLOT:
                _step, _micro, slot, _size = r.unpack("<QQIQ")
                out = _frame(_RELEASE, struct.pack("<I", slot))
            elif kind == _ERROR:
                # Refused (past the job's end, say): the server has closed the connection.
                raise _Dropped(r.string())
            elif kind != _BATCH:
                self._refuse(f"expected the answer made ahead, got kind {kind}")
        if self._ahead != at:
            out += _frame(_REQUEST, struct.pack("<QQ", *at))
        if following is not None:
            out += _frame(_REQUEST, struct.pack("<QQ", *following))
        self._ahead = None
        self._sock.sendall(out)
        kind, r = self._read_frame()
        batch = self._answer(at, kind, r)
        self._ahead = following
        return batch

    def _refuse(self, message):
        self.close()
        raise (EndOfJob if message.startswith(END_OF_JOB) else ServerError)(message)

    def _answer(self, at, kind, r):
        """The micro-batch `at` from its answer; ServerError for a refusal or any other answer."""
        expected = "Slot" if self._ring is not None else "Batch"
        if kind == _ERROR:
            self._refuse(r.string())
        if kind == _SLOT and self._ring is not None:
            step, micro_step, slot, size = r.unpack("<QQIQ")
            if (step, micro_step) != at:
                self._refuse(f"expected the Slot of {at}, got the Slot of {(step, micro_step)}")
            self._held = slot
            return self._read_slot(slot, size)
        if kind != _BATCH or self._ring is not None:
            self._refuse(f"expected the {expected} of {at}, got kind {kind}")
        got = r.unpack("<QQ")
        if got != at:
            self._refuse(f"expected the Batch of {at}, got the Batch of {got}")
        (count,) = r.unpack("<I")
        datasets, indices, tokens, cu_seqlens = [], [], [], []
        for _ in range(count):
            dataset, index = r.unpack("<IQ")
            datasets.append(dataset)
            indices.append(index)
            cu_seqlens.append(r.u32s().astype(np.int32))
            tokens.append(r.u32s().astype(np.int64))
        return Batch(at[0], at[1], np.array(datasets, dtype=np.int32), np.array(indices, dtype=np.int64),
                     np.stack(tokens) if tokens else np.zeros((0, self.seq_len), np.int64), cu_seqlens)


try:
    import torch
    from torch.utils.data import IterableDataset
except ImportError:  # numpy-only installs
    torch = None

if torch is not None:

    class FlameStreamDataset(IterableDataset):
        """flame's batches from flame-stream, one per micro-batch from `start_step` on, for `steps` steps or
        to the job's end; split among DataLoader workers so that any number of them yields the one-process
        sequence. Items: `input_ids`, `labels` and `cu_seqlens` in `layout` "flat" or "per_sample" (see the
        module's docstring)."""

        def __init__(self, endpoint, job_toml, rank=0, world_size=1, start_step=0, token=None,
                     shared_memory=None, steps=None, layout="flat"):
            super().__init__()
            if layout not in ("flat", "per_sample"):
                raise ValueError(f"layout {layout!r}: expected 'flat' or 'per_sample'")
            self.args = (endpoint, job_toml, rank, world_size, token, shared_memory)
            self.start_step, self.steps, self.layout = start_step, steps, layout

        def __iter__(self):
            endpoint, job, rank, world, token, shared_memory = self.args
            info = torch.utils.data.get_worker_info()
            worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
            client = Client(endpoint, job, rank, world, token, shared_memory=shared_memory)
            try:
                micro_steps = client.micro_steps
                count = None if self.steps is None else self.steps * micro_steps

                def at(position):
                    return self.start_step + position // micro_steps, position % micro_steps

                position = worker
                while (count is None or position < count) and client.in_job(*at(position)):
                    # This worker's next micro-batch is asked for ahead (when the job has it, past `steps`
                    # too: the caller may carry on where this dataset stops).
                    try:
                        batch = client.micro_batch(*at(position), following=at(position + workers))
                    except EndOfJob:
                        return  # the job's end, where `num_samples` could not say it ahead
                    yield self._item(batch)
                    position += workers
            finally:
                client.close()

        def _item(self, batch):
            ids = torch.from_numpy(batch.tokens)
            if self.layout == "per_sample":
                return {"input_ids": ids, "labels": ids.clone(),
                        "cu_seqlens": [torch.from_numpy(c) for c in batch.cu_seqlens]}
            samples, seq_len = ids.shape
            flat = ids.reshape(1, samples * seq_len)
            cu = np.concatenate([np.zeros(1, np.int32)]
                                + [c[1:] + np.int32(i * seq_len) for i, c in enumerate(batch.cu_seqlens)])
            return {"input_ids": flat, "labels": flat.clone(), "cu_seqlens": torch.from_numpy(cu.astype(np.int32))}
