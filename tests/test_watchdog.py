"""The MPI watchdog (`slidenet.training.watchdog`) without MPI: fake ranks in one process.

`FakeComm` is one rank's end of an in-memory post office with mpi4py's calls (Isend, Irecv,
Iprobe, Recv, Dup, Abort). A live rank is a thread waiting in its own collective (so it answers
roll calls); a dead one is a rank nobody plays. The oracle is the set of ranks the test made
silent: the watchdog must name exactly those, end the job with status 2 once the timeout has
passed and before the roll call's window has closed, and leave a collective that completes alone.
The same watchdog under a real `mpiexec` is tested in test_distributed.py (a stopped rank).
"""
import re
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from slidenet.errors import SlidenetError
from slidenet.training import watchdog
from slidenet.training.watchdog import Watchdog, timeout_setting

ANY_SOURCE = -1


class FakeMPIError(Exception):
    pass


class Status:
    def __init__(self):
        self.source = None

    def Get_source(self):
        return self.source


MPI = SimpleNamespace(Status=Status, ANY_SOURCE=ANY_SOURCE, Exception=FakeMPIError)


class JobEnded(Exception):
    """What MPI_Abort does to the job, as an exception the test can catch."""

    def __init__(self, code):
        super().__init__(code)
        self.code = code


class Done:
    def Test(self):
        return True


class Never:
    """A collective that some rank never joins."""

    def __init__(self):
        self.polls = 0

    def Test(self):
        self.polls += 1
        return False


class After:
    """A collective that completes on its n-th poll."""

    def __init__(self, n):
        self.n, self.polls = n, 0

    def Test(self):
        self.polls += 1
        return self.polls >= self.n


class Until:
    """A collective that completes once `event` is set."""

    def __init__(self, event):
        self.event = event

    def Test(self):
        return self.event.is_set()


class PostOffice:
    """Messages between fake ranks: (source, dest, tag) -> queue of arrays."""

    def __init__(self):
        self.lock = threading.Lock()
        self.boxes = {}

    def post(self, source, dest, tag, data):
        with self.lock:
            self.boxes.setdefault((source, dest, tag), []).append(np.array(data, copy=True))

    def find(self, dest, source, tag):
        with self.lock:
            for (s, d, t), queue in self.boxes.items():
                if d == dest and t == tag and queue and source in (ANY_SOURCE, s):
                    return s
        return None

    def take(self, dest, source, tag, buffer):
        with self.lock:
            buffer[...] = self.boxes[(source, dest, tag)].pop(0)


class Received:
    def __init__(self, office, comm, buffer, source, tag):
        self.office, self.comm, self.buffer, self.source, self.tag = office, comm, buffer, source, tag
        self.done = False

    def Test(self):
        if not self.done and self.office.find(self.comm.rank, self.source, self.tag) is not None:
            self.office.take(self.comm.rank, self.source, self.tag, self.buffer)
            self.done = True
        return self.done


class FakeComm:
    def __init__(self, office, rank, size):
        self.office, self.rank, self.size = office, rank, size
        self.aborted = []

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def Dup(self):
        return FakeComm(self.office, self.rank, self.size)

    def Isend(self, data, dest, tag):
        self.office.post(self.rank, dest, tag, data)
        return Done()

    def Irecv(self, buffer, source, tag):
        return Received(self.office, self, buffer, source, tag)

    def Iprobe(self, source, tag, status):
        found = self.office.find(self.rank, source, tag)
        if found is not None:
            status.source = found
        return found is not None

    def Recv(self, buffer, source, tag):
        self.office.take(self.rank, source, tag, buffer)

    def Abort(self, code):
        self.aborted.append(code)
        raise JobEnded(code)


def who(r):
    return f"rank {r} (pid {4000 + r} on node{r})"


def dog(office, rank, size, timeout):
    watched = Watchdog(FakeComm(office, rank, size), MPI, timeout, who)
    watched.forward_seconds = 0.0       # no mpiexec pipe to drain here
    watched.quiet_seconds = 0.0
    return watched


@pytest.fixture
def live_ranks():
    """Start fake ranks that wait in a collective of their own (answering roll calls) until
    the test ends; returns a function that starts them on a post office."""
    stop, threads = threading.Event(), []

    def start(office, ranks, size):
        for r in ranks:
            waiting = dog(office, r, size, timeout=60)
            thread = threading.Thread(target=waiting.wait, args=(Until(stop), "a live wait"),
                                      daemon=True)
            thread.start()
            threads.append(thread)

    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=5)


def test_a_collective_that_completes_passes_without_a_roll_call():
    office = PostOffice()
    watched = dog(office, 0, 3, timeout=0.5)
    request = After(200)
    began = time.monotonic()
    watched.wait(request, "the gradient sum")
    assert request.polls == 200 and time.monotonic() - began < 0.5
    assert watched.comm.aborted == [] and office.boxes == {}     # nobody was asked anything
    watched.wait(Done(), "the broadcast of the weights")


@pytest.mark.parametrize("size, dead", [(2, [1]), (3, [2]), (4, [1, 3]), (3, [])],
                         ids=["2-ranks", "one-of-3", "two-of-4", "all-alive"])
def test_a_collective_that_never_completes_names_the_silent_ranks_and_ends_the_job(
        size, dead, live_ranks, capsys):
    office, timeout = PostOffice(), 1.0
    live_ranks(office, [r for r in range(1, size) if r not in dead], size)
    watched = dog(office, 0, size, timeout)
    request = Never()
    began = time.monotonic()
    with pytest.raises(JobEnded) as ended:
        watched.wait(request, "the gradient sum")
    seconds = time.monotonic() - began
    assert ended.value.code == 2 and watched.comm.aborted == [2]
    # Not before the timeout; within it and the roll call's window (min(5 s, timeout)).
    assert timeout < seconds < 2 * timeout + 1.0
    assert request.polls > 10         # it kept polling until then
    err = capsys.readouterr().err
    named = sorted(int(r) for r in re.findall(r"rank (\d+) \(pid", err))
    assert named == dead
    silent = " and ".join(who(r) for r in dead) or "another rank"
    assert err == (f"slidenet: {silent} stopped responding: rank 0 waited {timeout:.0f} s for it "
                   "in the gradient sum; ending the job\n")


def test_a_waiting_rank_answers_a_roll_call():
    office = PostOffice()
    asker, waiting = dog(office, 0, 2, timeout=5), dog(office, 1, 2, timeout=5)
    stop = threading.Event()
    thread = threading.Thread(target=waiting.wait, args=(Until(stop), "x"), daemon=True)
    thread.start()
    try:
        assert asker.roll_call() == []
    finally:
        stop.set()
        thread.join(timeout=5)
    # Once it has left its collective, nobody answers.
    asker.roll_call_seconds = 0.2
    assert asker.roll_call() == [1]


def test_a_rank_that_cannot_be_reached_is_silent():
    office = PostOffice()
    watched = dog(office, 0, 3, timeout=0.2)
    sends = watched._calls.Isend

    def refuse(data, dest, tag):
        if dest == 2:
            raise FakeMPIError("connection closed")
        return sends(data, dest, tag)

    watched._calls.Isend = refuse
    assert watched.roll_call() == [1, 2]


def test_an_exception_on_a_rank_ends_the_job_with_status_1(capsys):
    watched = dog(PostOffice(), 1, 2, timeout=1)
    try:
        raise KeyError("boom")
    except KeyError as err:
        with pytest.raises(JobEnded) as ended:
            watched.excepthook(type(err), err, err.__traceback__)
    assert ended.value.code == 1
    err = capsys.readouterr().err
    assert "KeyError: 'boom'" in err
    assert err.endswith("slidenet: rank 1 of 2 failed with KeyError (traceback above); "
                        "ending the job\n")


@pytest.mark.parametrize("text, seconds", [("", watchdog.DEFAULT_TIMEOUT), ("4", 4.0),
                                           ("0.5", 0.5)])
def test_the_timeout_setting(monkeypatch, text, seconds):
    monkeypatch.setenv("SLIDENET_MPI_TIMEOUT", text)
    assert timeout_setting() == seconds


@pytest.mark.parametrize("text", ["0", "-3", "soon", "nan"])
def test_a_bad_timeout_setting_says_what_to_give(monkeypatch, text):
    monkeypatch.setenv("SLIDENET_MPI_TIMEOUT", text)
    with pytest.raises(SlidenetError, match=rf"SLIDENET_MPI_TIMEOUT='{text}': give the seconds "
                                            r"a rank waits .* e\.g\. 30"):
        timeout_setting()
