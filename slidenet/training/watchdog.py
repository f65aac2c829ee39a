"""The MPI watchdog: under `mpiexec`, a fault ends the job rather than hangs it.

An exception on one rank is printed with its rank and ends every rank through MPI_Abort
(`Watchdog.abort`, and the excepthook `slidenet.training.distributed` installs). Every collective is
non-blocking and watched (`Watchdog.wait`): a rank that waits longer than the timeout
(SLIDENET_MPI_TIMEOUT, 30 s) for its peers asks them all whether they are alive (a roll call on
a communicator of its own), names those that did not answer, and ends the job. A rank that
waits answers the others' roll calls meanwhile, so only a rank that is stopped, hung outside a
collective or cut off is named. A rank that dies outright (SIGKILL, the kernel's out-of-memory
killer) is usually noticed first by mpiexec, which then ends the others at once.

The watchdog needs only what it calls: a communicator with mpi4py's `Get_rank`, `Get_size`,
`Dup`, `Isend`, `Irecv`, `Iprobe`, `Recv` and `Abort`, requests with `Test`, and a namespace
`mpi` with `Status`, `ANY_SOURCE` and `Exception` (mpi4py's `MPI`). tests/test_watchdog.py
gives it fakes of these, so its timeout and roll call are tested without MPI.
"""
import os
import sys
import time

import numpy as np

from slidenet.errors import SlidenetError

# Seconds a rank waits in one collective before it holds a roll call (SLIDENET_MPI_TIMEOUT).
# Longer than any legitimate wait (rank 0 writing a checkpoint, a first step compiling the
# kernels), short enough that a job whose rank vanished ends within a minute.
DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 86400.0       # a day: the longest wait SLIDENET_MPI_TIMEOUT may set
ROLL_CALL_SECONDS = 5.0     # how long the roll call waits for answers
SPIN_SECONDS = 0.002        # a collective is polled without pause this long (the usual case) ...
NAP_SECONDS = 0.0002        # ... then with short sleeps, so that a waiting rank frees its core
ANSWER_EVERY = 0.05         # how often a waiting rank looks for a roll call to answer
ASK, ANSWER = 1, 2          # message tags of the roll call
# A rank other than 0 waits this long before it reports an error and aborts: when every rank
# meets the same error (a bad setting), rank 0's abort ends the job first and it alone speaks.
QUIET_SECONDS = 1.0
# How long a rank waits, its message printed, before it calls MPI_Abort (see `Watchdog.abort`).
FORWARD_SECONDS = 0.3
# How long a rank that called MPI_Abort waits for mpiexec to end it before it exits itself.
ABORT_GRACE_SECONDS = 10.0


class Watchdog:
    """Watches one rank's collectives on `comm`; ends the job on a fault.

    comm: the job's communicator (the roll call runs on a duplicate of it); mpi: mpi4py's `MPI`
    (or a fake); timeout: seconds a collective may take (`timeout_setting()`); who: rank ->
    the text that names it in messages ('rank 1 (pid 4242 on node2)').
    """

    quiet_seconds = QUIET_SECONDS
    forward_seconds = FORWARD_SECONDS
    roll_call_seconds = ROLL_CALL_SECONDS

    def __init__(self, comm, mpi, timeout, who=lambda r: f"rank {r}"):
        self.comm, self.mpi, self.timeout, self.who = comm, mpi, timeout, who
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self._calls = comm.Dup()        # the roll call's own messages
        self._answers = []
        self._answered = 0.0

    def wait(self, request, what):
        """Complete a non-blocking collective (`what` names it in the message); past the
        timeout, name the silent ranks and end the job. Meanwhile answer other ranks' roll
        calls."""
        began = time.monotonic()
        while not request.Test():
            waited = time.monotonic() - began
            if waited > SPIN_SECONDS:
                time.sleep(NAP_SECONDS)
                self.answer_roll_calls()
            if waited > self.timeout:
                silent = self.roll_call()
                who = " and ".join(self.who(r) for r in silent) or "another rank"
                self.abort(f"slidenet: {who} stopped responding: rank {self.rank} waited "
                           f"{waited:.0f} s for it in {what}", 2)

    def abort(self, message, code):
        """Print `message` and end every rank of the job with exit status `code`."""
        if self.rank:
            time.sleep(self.quiet_seconds)
        if message:
            print(f"{message}; ending the job", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # mpiexec forwards our output through a pipe; once told of the abort it may end the job
        # before it has read that pipe (seen: exit status 2 and no message, ~1 run in 12).
        time.sleep(self.forward_seconds)
        self.comm.Abort(code)
        # MPICH's MPI_Abort returns once it has told mpiexec, which then ends every rank with
        # this status; this one must not go on meanwhile, nor outlive an mpiexec that failed.
        time.sleep(ABORT_GRACE_SECONDS)
        os._exit(code)

    def excepthook(self, kind, value, traceback):
        """sys.excepthook under MPI: the traceback, then the end of every rank (status 1)."""
        sys.__excepthook__(kind, value, traceback)
        self.abort(f"slidenet: rank {self.rank} of {self.size} failed with {kind.__name__} "
                   "(traceback above)", 1)

    def answer_roll_calls(self, force=False):
        """Tell each rank that asked (at most every ANSWER_EVERY s, unless `force`) that this
        one is alive."""
        now = time.monotonic()
        if not force and now - self._answered < ANSWER_EVERY:
            return
        self._answered = now
        status = self.mpi.Status()
        while self._calls.Iprobe(source=self.mpi.ANY_SOURCE, tag=ASK, status=status):
            asker = np.empty(1, dtype=np.int64)
            self._calls.Recv(asker, source=status.Get_source(), tag=ASK)
            reply = np.array([self.rank], dtype=np.int64)
            self._answers.append((reply, self._calls.Isend(reply, dest=int(asker[0]), tag=ANSWER)))

    def roll_call(self):
        """Ask every other rank whether it is alive; the ranks that did not answer in time.
        A rank answers while it waits in a collective (or holds a roll call itself)."""
        peers = [r for r in range(self.size) if r != self.rank]
        me = np.array([self.rank], dtype=np.int64)
        heard = {r: np.empty(1, dtype=np.int64) for r in peers}
        asks, replies = [], {}
        for r in peers:
            try:
                asks.append(self._calls.Isend(me, dest=r, tag=ASK))
                replies[r] = self._calls.Irecv(heard[r], source=r, tag=ANSWER)
            except self.mpi.Exception:
                pass                    # that rank's connection is gone: it stays silent
        deadline = time.monotonic() + min(self.roll_call_seconds, self.timeout)
        silent = set(peers)
        while silent and time.monotonic() < deadline:
            self.answer_roll_calls(force=True)
            for r in sorted(silent):
                try:
                    if r in replies and replies[r].Test():
                        silent.discard(r)
                except self.mpi.Exception:
                    replies.pop(r, None)
            time.sleep(0.01)
        return sorted(silent)


def timeout_setting():
    """SLIDENET_MPI_TIMEOUT in seconds (DEFAULT_TIMEOUT when unset); SlidenetError unless above
    0 and at most MAX_TIMEOUT (inf would switch the watchdog off, and a job that hangs would
    then hang for good)."""
    text = os.environ.get("SLIDENET_MPI_TIMEOUT", "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        value = -1
    if not 0 < value <= MAX_TIMEOUT:
        raise SlidenetError(f"SLIDENET_MPI_TIMEOUT={text!r}: give the seconds a rank waits for "
                            f"the others before it ends the job, from above 0 to "
                            f"{MAX_TIMEOUT:g} (a day), e.g. {DEFAULT_TIMEOUT:g}")
    return value
