"""Data-parallel training and evaluation on MPI: `mpiexec -n R slidenet train ...`.

R processes ("ranks"), on one machine or on a hostfile's machines, train one model. Each rank
holds the whole model and the whole data set, and every rank takes the same seeded decisions
(shuffle order, augmentation, dropout masks), so they agree on every global batch; each then
computes its own slice of it, rows rank*b:(rank+1)*b for b = batch / R:

    forward -> loss -> backward on the slice      BATCHNORM sums its statistics over all ranks
    one Allreduce of every gradient, in place      one flat buffer per step (tensor fusion)
    the same optimizer step on every rank          so the weights stay identical, bit for bit

Each slice's loss gradient is weighted by its share of the global batch, so the summed gradient
is the one process's gradient of the batch's mean loss, to rounding. The last batch of an epoch
is split as evenly as it goes (sizes differ by at most one, weighted the same way); a rank left
without an image by a last batch smaller than R recomputes image 0 as a stand-in with weight 0.
So R ranks and one process end with the same weights to float rounding, for any R.

Rank 0 alone writes files and shows progress. Validation and `slidenet eval` score one shard of
the images per rank and add up the confusion matrices and loss sums.

Faults end the job rather than hang it: every collective here goes through the `Watchdog` of
`slidenet.training.watchdog` (the timeout, the roll call, MPI_Abort), and an
error on one rank ends them all (`fail`, and the watchdog's excepthook).

Without an MPI launch (no PMI_SIZE / OMPI_COMM_WORLD_SIZE / MV2_COMM_WORLD_SIZE above 1 in the
environment, and mpi4py's MPI not imported) `world()` is None, mpi4py is never imported, and
training runs exactly the one-process code as before.
"""
import hashlib
import json
import os
import socket
import sys
from contextlib import contextmanager

import numpy as np

from slidenet.errors import SlidenetError
from slidenet.ops import runtime
from slidenet.ops.shard import Part
from slidenet.training.evaluate import metrics, tally
from slidenet.training.watchdog import Watchdog, timeout_setting

# What launchers put in each process's environment: the number of processes started.
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
_state = {"group": None, "checked": False}


class EveryRankError(SlidenetError):
    """A mistake every rank finds at the same point, from the same numbers (a batch size that
    does not split, ranks that disagree): they all stop there, and rank 0 alone reports it."""
    every_rank = True


def launched_size():
    """How many processes the launcher started (1 without a launcher), from the environment."""
    for name in SIZE_VARIABLES:
        if os.environ.get(name, "").strip().isdigit():
            return int(os.environ[name])
    return 1


def launched_rank():
    """This process's rank according to the launcher's environment (0 without a launcher)."""
    for name in RANK_VARIABLES:
        if os.environ.get(name, "").strip().isdigit():
            return int(os.environ[name])
    return 0


def world():
    """The `Group` of all ranks when this process is one of several MPI processes, else None.

    The first call initialises MPI (importing mpi4py) and installs the excepthook; without an
    MPI launch it imports nothing and returns None.
    """
    if not _state["checked"]:
        _state["checked"] = True
        with _joining():
            comm = _comm_world()
            if comm is not None and comm.Get_size() > 1:
                _state["group"] = Group(comm)
    return _state["group"]


# The watchdog of `_joining`: a separate process, since the rank it watches may be stuck in
# MPI_Init holding the GIL, where no thread or signal handler of its own would run. It ends
# when its stdin closes (the rank joined, or died); past the timeout it speaks and ends it.
_WATCHDOG = """
import os, select, signal, sys
pid, seconds, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
if not select.select([sys.stdin], [], [], seconds)[0]:
    sys.stderr.write(message + "\\n")
    sys.stderr.flush()
    os.kill(pid, signal.SIGTERM)
"""


@contextmanager
def _joining():
    """Watch this rank's start of MPI (MPI_Init and the first collectives): a rank that ended
    before joining (a bad flag, no mpi4py on its machine, a command that runs in one process)
    would leave the others waiting there forever, and mpiexec does not notice. Past the
    timeout, say so and end this rank, which makes mpiexec end the job."""
    size = launched_size()
    if size <= 1:
        yield
        return
    timeout = timeout_setting()
    message = (f"slidenet: rank {launched_rank()} of {size} (pid {os.getpid()}): the other ranks "
               f"did not all join MPI within {timeout:g} s: one of them ended before it did (its "
               "message is above); ending the job (SLIDENET_MPI_TIMEOUT sets the wait)")
    import subprocess
    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(timeout),
                                 message], stdin=subprocess.PIPE)
    try:
        yield
    finally:
        watchdog.stdin.close()
        watchdog.wait()


def rank():
    """This process's rank (0 in one process): rank 0 writes the files and prints."""
    group = world()
    return group.rank if group else 0


def _comm_world():
    launched = launched_size()
    if launched <= 1 and "mpi4py.MPI" not in sys.modules:
        return None
    try:
        import mpi4py
        # Only the main thread calls MPI; the kernels' worker threads never do.
        mpi4py.rc.thread_level = "funneled"
        from mpi4py import MPI
    except ImportError:
        raise SlidenetError(
            f"this is one of {launched} processes started by mpiexec, but mpi4py is not "
            "installed, so they cannot work together; install it with pip install mpi4py "
            "mpich (slidenet's `mpi` extra, which make setup installs), or run without "
            "mpiexec") from None
    comm = MPI.COMM_WORLD
    if launched > 1 and comm.Get_size() != launched:
        raise SlidenetError(
            f"mpiexec started {launched} processes but MPI sees {comm.Get_size()}: this mpiexec "
            "belongs to another MPI than the library mpi4py uses; run the mpiexec installed "
            "with the `mpich` package, next to this Python (" + os.path.join(
                os.path.dirname(sys.executable), "mpiexec") + ")")
    return comm


def fail(command, message, code, every_rank=False):
    """Report an error and end: in one process print it and return `code`; under MPI print it
    with this rank's number and end every rank of the job with MPI_Abort (the others may be
    waiting for this one in a collective, which would otherwise hang them).

    every_rank: every rank meets this error at the same point (`EveryRankError`), so they all
    return `code` and exit together, and rank 0 alone prints it.
    """
    group = _state["group"]
    if group is not None and not every_rank:
        group.watchdog.abort(f"slidenet {command}: rank {group.rank} of {group.size}: {message}",
                             code)
    me = group.rank if group else launched_rank()
    if me == 0:
        # An error of every rank, or one process: rank 0 says it for all.
        print(f"slidenet {command}: {message}", file=sys.stderr, flush=True)
    elif not every_rank:
        # MPI not started: this rank alone may have met it; it says so before it ends (the
        # others, waiting for it in MPI_Init, are ended by their watchdog, `_joining`).
        print(f"slidenet {command}: rank {me} of {launched_size()}: {message}", file=sys.stderr,
              flush=True)
    return code


class Group:
    """All ranks of the job: this process's `rank`, their number `size`, and the collectives
    training and evaluation use (the data-parallel sums), each completed by `watchdog`."""

    def __init__(self, comm, timeout=None):
        from mpi4py import MPI
        self.MPI = MPI
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        # Blocking collectives here: nothing runs yet that a lost rank could leave waiting
        # longer than mpiexec takes to notice.
        self.pids = comm.allgather(os.getpid())
        self.hosts = comm.allgather(socket.gethostname())
        self.local_size = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
        self.watchdog = Watchdog(comm, MPI, timeout or timeout_setting(), self.who)
        self._flat = None               # the gradient buffer, allocated at the first step
        sys.excepthook = self.watchdog.excepthook
        # mpiexec hands each rank's output on through a pipe: line by line, not when it is full.
        sys.stdout.reconfigure(line_buffering=True)

    # ----- who is who -----------------------------------------------------------------------

    def who(self, r):
        """'rank 1 (pid 4242 on node2)'."""
        return f"rank {r} (pid {self.pids[r]} on {self.hosts[r]})"

    def describe(self):
        """One line for the log: the ranks, their processes and hosts."""
        return (f"data-parallel on {self.size} processes: "
                + ", ".join(self.who(r) for r in range(self.size)))

    @property
    def cores_per_rank(self):
        """This machine's cores shared among the ranks on it."""
        return max(1, (os.cpu_count() or 1) // self.local_size)

    @contextmanager
    def workers(self, count=0):
        """Kernel worker threads (0: this rank's share of the cores), each calling a BLAS of
        one thread, so that the ranks on one machine do not fight over its cores."""
        count = count or self.cores_per_rank
        from threadpoolctl import threadpool_limits
        with runtime.workers(count), threadpool_limits(limits=max(1, self.cores_per_rank // count),
                                                       user_api="blas"):
            yield

    @property
    def shows_progress(self):
        """Rank 0 shows the progress bar (on stdout, see `slidenet.progress`) when mpiexec's
        output is a terminal."""
        return self.rank == 0 and (sys.stdout.isatty() or _launcher_on_terminal())

    # ----- splitting a batch ------------------------------------------------------------------

    def check_batch_size(self, batch_size):
        """Each rank computes batch_size / R images of every batch: R must divide it."""
        if batch_size % self.size == 0:
            return
        below = batch_size // self.size * self.size
        sizes = " or ".join(str(b) for b in (below, below + self.size) if b > 0)
        ranks = [str(r) for r in range(2, batch_size + 1) if batch_size % r == 0][:12]
        ranks = " or ".join(", ".join(ranks).rsplit(", ", 1)) if ranks else "1"
        raise EveryRankError(
            f"--batch-size {batch_size} does not split over {self.size} processes: "
            f"{batch_size} / {self.size} = {batch_size / self.size:.2f} images each; with "
            f"{self.size} processes use --batch-size {sizes}, or start a number of processes "
            f"that divides {batch_size} (mpiexec -n {ranks})")

    def part(self, n):
        """This rank's `Part` of a global batch of n images: the same split on every rank,
        sizes differing by at most one; a stand-in when there are fewer images than ranks."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        stop = start + base + (self.rank < extra)
        if stop > start:
            return Part(start, stop, n, (stop - start) / n, self.sum)
        return Part(0, 1, n, 0.0, lambda values: self.sum(np.zeros_like(values)))

    # ----- the collectives -----------------------------------------------------------------

    def sum(self, values, what="a batch-norm sum"):
        """float64 values (k,) added over all ranks: a new array."""
        total = np.array(values, dtype=np.float64)
        return self.sum_(total, what)

    def sum_(self, buffer, what):
        """Add a contiguous array over all ranks, in place (one Iallreduce); returns it."""
        self.watchdog.wait(self.comm.Iallreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM), what)
        return buffer

    def sum_step(self, grads, part, loss, hits, n):
        """One training step's sums over all ranks, in one Allreduce of one flat buffer: every
        gradient (copied in) and the step's loss sum, correct count and image count.

        Returns (grads: name -> view of the summed gradient, the global batch's mean loss,
        its correct predictions, its images). A stand-in part adds zeros for its numbers.
        """
        if self._flat is None:
            sizes = [g.size for g in grads.values()]
            dtype = next(iter(grads.values())).dtype
            self._flat = np.empty(sum(sizes) + 3, dtype=dtype)
            offsets = np.cumsum([0] + sizes)
            self._views = {name: self._flat[a:b].reshape(g.shape)
                           for (name, g), a, b in zip(grads.items(), offsets, offsets[1:])}
        if part.active:
            for name, g in grads.items():
                np.copyto(self._views[name], g)
            self._flat[-3:] = [loss * n, hits, n]
        else:   # a stand-in's rows are not in the batch (and BATCHNORM's dx is not 0 there)
            self._flat[...] = 0
        self.sum_(self._flat, "the gradient sum")
        loss_sum, hits, n = (float(v) for v in self._flat[-3:])
        return self._views, loss_sum / n, int(round(hits)), int(round(n))

    def broadcast_(self, arrays):
        """Overwrite every array of the dict (contiguous) with rank 0's, in one broadcast."""
        arrays = list(arrays.values())
        if not all(a.flags.c_contiguous for a in arrays):
            raise ValueError("broadcast_ writes into contiguous arrays only")
        flat = np.concatenate([a.reshape(-1).view(np.uint8) for a in arrays])
        self.watchdog.wait(self.comm.Ibcast(flat, root=0), "the broadcast of the weights")
        offset = 0
        for a in arrays:
            a.reshape(-1).view(np.uint8)[...] = flat[offset:offset + a.nbytes]
            offset += a.nbytes

    def check_same(self, arrays, what, hint):
        """Raise SlidenetError on every rank if any rank's arrays (a dict) differ from rank 0's
        (compared by SHA-256 digests, one gather of 32 bytes per rank)."""
        digest = hashlib.sha256()
        for name in sorted(arrays):
            a = np.ascontiguousarray(arrays[name])
            digest.update(f"{name} {a.dtype} {a.shape}".encode())
            digest.update(a.reshape(-1).view(np.uint8).data)
        mine = np.frombuffer(digest.digest(), dtype=np.uint8)
        every = np.empty((self.size, mine.size), dtype=np.uint8)
        self.watchdog.wait(self.comm.Iallgather(mine, every), f"the check of {what}")
        differ = [r for r in range(1, self.size) if not np.array_equal(every[r], every[0])]
        if differ:
            ranks = ", ".join(f"rank {r}" for r in differ)
            raise EveryRankError(f"{ranks} and rank 0 differ in {what}: {hint}")

    def check_setup(self, config, dataset):
        """Every rank must train with the same settings on the same data, with the same NumPy
        (whose generators must draw the same numbers) and slidenet. config: a JSON-able dict."""
        import slidenet
        setup = json.dumps({"config": config, "numpy": np.__version__,
                            "slidenet": slidenet.__version__}, sort_keys=True)
        self.check_same({"setup": np.frombuffer(setup.encode(), dtype=np.uint8),
                         "x_train": dataset.x_train, "y_train": dataset.y_train},
                        "their settings, data or software",
                        "every rank must run the same command on the same data files, with the "
                        "same versions of NumPy and slidenet")

    def evaluate(self, net, x, y, normalizer, num_classes, loss="softmax", batch_size=256):
        """`slidenet.training.evaluate.evaluate` of all of x, y, each rank scoring one contiguous shard;
        the confusion matrices and loss sums are added over the ranks."""
        lo, hi = (len(y) * r // self.size for r in (self.rank, self.rank + 1))
        confusion, total_loss = tally(net, x[lo:hi], y[lo:hi], normalizer, num_classes, loss,
                                      batch_size)
        both = self.sum_(np.append(confusion.ravel().astype(np.float64), total_loss),
                         "the evaluation's sums")
        confusion = np.rint(both[:-1]).astype(np.int64).reshape(confusion.shape)
        return metrics(confusion, both[-1])

def _launcher_on_terminal():
    """Whether a process above this one (mpiexec, through its proxy) writes its output to a
    terminal: then a rank's piped stdout still ends on the user's screen (Linux /proc only)."""
    pid = os.getpid()
    try:
        for _ in range(3):
            with open(f"/proc/{pid}/stat") as fh:
                pid = int(fh.read().rsplit(")", 1)[1].split()[1])
            if pid <= 1:
                return False
            if os.readlink(f"/proc/{pid}/fd/1").startswith(("/dev/pts/", "/dev/tty")):
                return True
    except (OSError, ValueError, IndexError):
        pass
    return False

