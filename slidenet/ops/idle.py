"""Whether this machine has a core to spare now: the decision behind `conv.pair`.

`pair` puts a second thread on one image's layers. That pays when a core sits idle; when every
core is busy (other processes, other engineers, a CI runner) the helper's polling takes time
from the caller instead, and one image gets slower. `SpareCore` decides from what other
processes have been using, sampled at most every `period` seconds:

    others = (CPU time of the whole machine - CPU time of this process) / wall time

over the last window, in cores (this process's own use, the helper's polling included, does not
count against it). Pairing is allowed while `others` stays at or below `cores - 1 - margin`:
on two cores, while the rest of the machine uses less than a quarter of one. A window's
measurement holds until the next one, so the cost is one clock read per layer and two small
file reads every `period`.

The first window must end before anything pairs. The signals are injected (`machine`, `own`,
`clock`), so the decision is tested without a busy machine. Where /proc/stat cannot be read (not
Linux), `machine_seconds` gives None and nothing is allowed: a core that cannot be seen to be
idle is not taken.
"""
import os
import time

PERIOD = 0.25           # seconds between two samples of the machine's CPU time
MARGIN = 0.75           # of the one spare core, this much must be free
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_seconds():
    """CPU seconds all cores of the machine have spent busy since boot (user, nice, system,
    irq, softirq, steal: not idle or iowait), from /proc/stat; None where it cannot be read."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
        if fields[0] != b"cpu":
            return None
        ticks = [int(v) for v in fields[1:9]]
    except (OSError, ValueError, IndexError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICKS


class SpareCore:
    """Whether a second core is free for this process, from the machine's recent CPU time.

    cores: the cores this process may use; machine() -> busy CPU seconds of the machine or None
    (`machine_seconds`); own() -> CPU seconds of this process (`time.process_time`); clock() ->
    seconds (`time.monotonic`). `allow()` answers from the last window of at least `period`
    seconds; `others` is that window's measurement (cores used by other processes) or None
    before the first window ends or without a machine clock (then `allow` is False).
    """

    def __init__(self, cores, machine=machine_seconds, own=time.process_time,
                 clock=time.monotonic, period=PERIOD, margin=MARGIN):
        self.cores, self.period, self.margin = cores, period, margin
        self._machine, self._own, self._clock = machine, own, clock
        self.others = None
        self._start = None          # (clock, machine, own) at the start of the window

    def _sample(self):
        busy = self._machine()
        return None if busy is None else (self._clock(), busy, self._own())

    def allow(self):
        """True while the last window left a core free of other processes; False until a first
        window has been measured, and always where the machine's CPU time cannot be read (what
        cannot be known to be idle is not used). Starts a new window when `period` has
        passed."""
        if self.cores < 2:
            return False
        if self._start is None:
            # Not before the first window is measured, so that a busy machine is never paired
            # on while the first window runs.
            self._start = self._sample()
            return False
        now = self._clock()
        if now - self._start[0] >= self.period:
            end = self._sample()
            if end is not None:
                wall = end[0] - self._start[0]
                used = (end[1] - self._start[1]) - (end[2] - self._start[2])
                self.others = max(0.0, used / wall)
                self._start = end
        return self._decide()

    def _decide(self):
        return self.others is not None and self.others <= self.cores - 1 - self.margin
