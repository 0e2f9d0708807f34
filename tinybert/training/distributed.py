"""Data parallelism over MPI: N processes (ranks) train one model, each on its slice of the batch.

    mpiexec -n 2 tinybert pretrain ...        the same command, the same model as one process

Every rank holds the whole model. A step:

    1. every rank builds the same global batch B (same order, same MLM masks: the generators are
       seeded by (seed, epoch), so building it costs each rank a little masking, no communication)
    2. rank r takes its rows, a contiguous shard B_r (``shard``), runs forward and backward on them
    3. the gradients are summed over the ranks (``allreduce_gradients``: MPI ``Allreduce``, SUM),
       so that every rank holds the gradient of the mean loss over the *global* batch:

           ∇L = (1/|B|) Σ_{i∈B} ∇ℓ_i = Σ_r (|B_r|/|B|) · [ (1/|B_r|) Σ_{i∈B_r} ∇ℓ_i ]
                                          └ weight ┘    └ rank r's local mean ┘

       Each rank scales its local loss gradient by |B_r|/|B| before its backward (``Trainer``), so
       the all-reduce is a plain sum. |B| counts what the loss averages over: rows for
       classification, masked tokens for MLM (each rank knows it: it built the whole batch).
    4. every rank takes the same optimizer step on the same gradient, so the weights stay equal
       (they start equal: ``broadcast_parameters`` copies rank 0's; ``broadcast_rng`` its dropout
       generator).

Randomness per example, not per rank: dropout draws one seed per layer per forward from the
model's generator (the same seed on every rank) and the mask of an element is Philox at the
element's place in the *global* batch — the rank tells its dropout layers and attention kernels
the global index of its first row (``set_batch_offset``) — so rank r draws for its rows exactly
what one process draws for them. Gradient accumulation (``--grad-accum-steps K``) is the same
split in time: K micro-batches, each sharded over the ranks, all under the same dropout seeds.

Buffers, not pickles: mpi4py's upper-case calls (``Allreduce``, ``Bcast``, ``Allgather``) move the
arrays' memory as it is. Small gradients are packed into buckets of ``BUCKET_BYTES`` so that one
call moves many (a call costs latency α; n bytes cost n/β more: fewer, larger messages).
On CuPy arrays the same calls work with a CUDA-aware MPI (mpi4py reads ``__cuda_array_interface__``);
the buffers are made with the arrays' own module, so nothing here is NumPy-only.

The all-reduce waits for the end of the backward. Overlapping it with the backward (an
``Iallreduce`` of each layer's gradients as soon as that layer's backward ends, as Horovod and
PyTorch DDP do) was tried in ``bench/data_parallel.py`` and did not pay on one machine, where the
bytes move through shared memory in well under a millisecond; on a network it is the next step.

Without MPI (``world()`` outside ``mpiexec``) the same interface is ``SingleProcess``, whose calls do
nothing: the trainer has one code path.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
import traceback

import numpy as np

from tinybert.errors import DistributedError, InvalidValue, RanksDisagree, TinyBertError
from tinybert.xp import get_array_module

BUCKET_BYTES = 4 << 20          # gradients are all-reduced in buckets of up to 4 MiB
ABORT_GRACE_S = 0.5             # before MPI_Abort: mpiexec may drop output it has not forwarded yet

# what launchers put in each process's environment: the world size
LAUNCHER_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
LAUNCHER_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")


def launcher_world_size(environ=None) -> int | None:
    """The number of processes an MPI launcher (mpiexec/mpirun/srun with PMI) started, from the
    environment it gives each process; None when not started by one."""
    environ = os.environ if environ is None else environ
    for name in LAUNCHER_SIZE_VARIABLES:
        if environ.get(name, "").strip().isdigit():
            return int(environ[name])
    if any(name in environ for name in LAUNCHER_RANK_VARIABLES):
        return 0                                      # started by a launcher that did not say how many
    return None


def world(environ=None):
    """The processes of this run: ``MPIWorld`` under an MPI launcher, else ``SingleProcess``.

    mpi4py is imported only under a launcher (importing it initialises MPI). A launcher without
    mpi4py is an error: otherwise N copies would each train the whole model and write one folder.
    """
    size = launcher_world_size(environ)
    if size is None or size == 1:
        return SingleProcess()
    try:
        from mpi4py import MPI
    except ImportError:
        raise DistributedError(
            f"this process was started by an MPI launcher (mpiexec; world size {size or 'unknown'}) but "
            "mpi4py is not installed, so the ranks cannot share gradients and would each train a whole "
            "model into the same folder. Install it with: pip install 'tinybert[mpi]' (or, on a cluster, "
            "pip install mpi4py against the cluster's MPI)") from None
    return MPIWorld(MPI.COMM_WORLD)


# ---------------------------------------------------------------------------------------------
# sharding: which rows of a batch this rank computes
# ---------------------------------------------------------------------------------------------

def shard(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """Rows [start, stop) of an n-row batch for ``rank``: contiguous, as equal as can be (the
    first n mod world_size ranks take one row more; a rank may get none when n < world_size)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def micro_batches(n: int, accum_steps: int, world_size: int, rank: int) -> list[tuple[int, int]]:
    """This rank's pieces of an n-row batch split into ``accum_steps`` consecutive micro-batches,
    each sharded over the ranks: [(start, stop), ...] in global row numbers (empty pieces left out)."""
    pieces = []
    for k in range(accum_steps):
        lo, hi = shard(n, accum_steps, k)
        a, b = shard(hi - lo, world_size, rank)
        if b > a:
            pieces.append((lo + a, lo + b))
    return pieces


def set_batch_offset(model, offset: int):
    """Tell every dropout layer and attention of ``model`` that row 0 of its next batches is row
    ``offset`` of the global batch (their Philox counters count from there)."""
    for module in model.modules():
        if hasattr(module, "batch_offset"):
            module.batch_offset = int(offset)


def ring_allreduce_seconds(n_bytes: float, machines: int, gbit_per_s: float, alpha: float = 5e-6) -> float:
    """The time model of a ring all-reduce of ``n_bytes`` over N = ``machines``:

        T = 2(N−1)/N · S/β + 2(N−1)·α

    reduce-scatter then all-gather: each machine sends 2(N−1) messages of S/N bytes; β is the link
    bandwidth in bytes/s (``gbit_per_s`` · 10⁹/8), α the latency of one message (5 µs: a fast
    Ethernet/RoCE fabric; TCP is nearer 20–50 µs)."""
    beta = gbit_per_s * 1e9 / 8
    return 2 * (machines - 1) / machines * n_bytes / beta + 2 * (machines - 1) * alpha


# ---------------------------------------------------------------------------------------------
# the two worlds
# ---------------------------------------------------------------------------------------------

class SingleProcess:
    """One process: rank 0 of 1; every collective is the identity."""
    rank, size = 0, 1
    is_main = True

    def allreduce_sum_(self, buf):
        return buf

    def allreduce_gradients(self, params):
        pass

    def broadcast_parameters(self, model):
        pass

    def broadcast_rng(self, rng):
        pass

    def check_same(self, what: str, value):
        pass

    def barrier(self):
        pass

    def stop_all_on_error(self):
        return contextlib.nullcontext()


class MPIWorld:
    """The ranks of ``comm`` (an mpi4py communicator)."""

    def __init__(self, comm):
        from mpi4py import MPI

        self.MPI, self.comm = MPI, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.is_main = self.rank == 0

    def allreduce_sum_(self, buf):
        """buf ← Σ_ranks buf, in place (a contiguous NumPy or CUDA-aware CuPy array); -> buf."""
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return buf

    def allreduce_gradients(self, params):
        """p.grad ← Σ_ranks p.grad for every trainable parameter, in buckets of ≤ BUCKET_BYTES:
        the grads of a bucket are copied into one flat buffer, summed by one Allreduce, copied back."""
        _through_buckets([p.grad for p in params if p.requires_grad], self.allreduce_sum_)

    def broadcast_parameters(self, model):
        """Every parameter ← rank 0's (one Bcast per bucket), so all ranks start from one model."""
        _through_buckets([p.data for p in model.parameters()], lambda flat: self.comm.Bcast(flat, root=0))

    def broadcast_rng(self, rng):
        """A NumPy PCG64 generator (the model's dropout generator) ← rank 0's state, as 6 words."""
        words = np.array(_pcg64_words(rng), dtype=np.uint64)
        self.comm.Bcast(words, root=0)
        _set_pcg64_words(rng, words)

    def check_same(self, what: str, value):
        """Refuse to go on unless every rank has the same ``value`` (JSON-able): a SHA-256 of it is
        gathered from all ranks and compared; every rank raises the same error."""
        digest = np.frombuffer(hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).digest(),
                               dtype=np.uint8)
        table = np.empty((self.size, digest.size), dtype=np.uint8)
        self.comm.Allgather(digest, table)
        differ = [r for r in range(self.size) if not np.array_equal(table[r], table[0])]
        if differ:
            raise RanksDisagree(f"ranks {differ} have a different {what} from rank 0: every rank of a "
                                "data-parallel run must be started with the same arguments and read the "
                                "same data (check the files each machine sees)")

    def barrier(self):
        self.comm.Barrier()

    @contextlib.contextmanager
    def stop_all_on_error(self):
        """An error on any rank stops every rank (MPI_Abort) after printing it: a rank that fails
        alone would otherwise leave the others waiting forever in the next all-reduce. Checkpoints
        are written atomically, so whatever the abort interrupts, nothing half-written is left."""
        try:
            yield
        except BaseException as e:                   # Ctrl-C's second press and SystemExit too
            if isinstance(e, RanksDisagree) or (isinstance(e, SystemExit) and not e.code):
                raise                                # every rank raises it: no one is left waiting
            if isinstance(e, SystemExit):             # a usage error or a refusal, already printed
                detail, what = "", f"exited with status {e.code}"
            else:
                detail = "" if isinstance(e, TinyBertError) else "".join(traceback.format_exception(e))
                what = f"{type(e).__name__}: {e}"
            print(f"{detail}[rank {self.rank} of {self.size}] {what}\n"
                  f"[rank {self.rank}] stopping all {self.size} ranks (MPI_Abort)", file=sys.stderr, flush=True)
            sys.stdout.flush()
            time.sleep(ABORT_GRACE_S)        # the launcher forwards output asynchronously: let it drain
            self.comm.Abort(1)


def _buckets(arrays, limit: int):
    """Consecutive groups of arrays of one dtype whose sizes add up to ≤ limit bytes (an array
    larger than the limit is a bucket of its own)."""
    bucket, nbytes = [], 0
    for a in arrays:
        if bucket and (nbytes + a.nbytes > limit or a.dtype != bucket[0].dtype):
            yield bucket
            bucket, nbytes = [], 0
        bucket.append(a)
        nbytes += a.nbytes
    if bucket:
        yield bucket


def _through_buckets(arrays, communicate) -> None:
    """Pass ``arrays`` through ``communicate`` (an in-place MPI call on one flat buffer) in buckets of
    ≤ BUCKET_BYTES: each bucket is packed into a flat array, communicated, and unpacked in place."""
    for bucket in _buckets(arrays, BUCKET_BYTES):
        xp = get_array_module(bucket[0])
        flat = xp.concatenate([a.reshape(-1) for a in bucket])
        communicate(flat)
        start = 0
        for a in bucket:
            a[...] = flat[start:start + a.size].reshape(a.shape)
            start += a.size


def _pcg64_words(rng) -> list[int]:
    state = rng.bit_generator.state
    if state.get("bit_generator") != "PCG64":
        raise InvalidValue(f"broadcast_rng needs a PCG64 generator, got {state.get('bit_generator')}")
    s, inc = state["state"]["state"], state["state"]["inc"]
    mask = (1 << 64) - 1
    return [s & mask, s >> 64, inc & mask, inc >> 64, state["has_uint32"], state["uinteger"]]


def _set_pcg64_words(rng, words):
    w = [int(x) for x in words]
    rng.bit_generator.state = {"bit_generator": "PCG64",
                               "state": {"state": w[0] | (w[1] << 64), "inc": w[2] | (w[3] << 64)},
                               "has_uint32": w[4], "uinteger": w[5]}


__all__ = ["world", "shard", "micro_batches", "set_batch_offset", "SingleProcess", "MPIWorld",
           "DistributedError", "RanksDisagree", "launcher_world_size", "BUCKET_BYTES", "ring_allreduce_seconds"]
