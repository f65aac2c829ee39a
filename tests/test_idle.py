"""`ops.idle.SpareCore`: whether a second core is free, from injected clocks (no real load), and
`machine_seconds` against /proc/stat's own arithmetic."""
import time

import pytest

from slidenet.ops import idle


class Clocks:
    """A machine whose other processes use `others` cores and this process `mine`, advanced
    by hand: the machine's busy time grows by (others + mine) * dt."""

    def __init__(self, others=0.0, mine=1.0):
        self.now, self.busy, self.own = 100.0, 5000.0, 7.0
        self.others, self.mine = others, mine

    def advance(self, dt):
        self.now += dt
        self.busy += (self.others + self.mine) * dt
        self.own += self.mine * dt

    def gate(self, cores=2, **kw):
        return idle.SpareCore(cores, machine=lambda: self.busy, own=lambda: self.own,
                              clock=lambda: self.now, **kw)


def test_a_quiet_machine_allows_and_our_own_use_does_not_count():
    clocks = Clocks(others=0.0, mine=2.0)          # both cores ours (caller + helper)
    gate = clocks.gate()
    assert not gate.allow()                        # nothing measured yet
    clocks.advance(0.1)
    assert not gate.allow() and gate.others is None
    clocks.advance(0.2)
    assert gate.allow() and gate.others == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("others, allowed", [(0.0, True), (0.2, True), (0.3, False),
                                             (1.0, False)])
def test_other_processes_above_the_margin_stop_it(others, allowed):
    clocks = Clocks(others=others)
    gate = clocks.gate()
    gate.allow()
    clocks.advance(0.5)
    assert gate.allow() is allowed
    assert gate.others == pytest.approx(others, abs=1e-9)


def test_a_window_holds_until_the_period_has_passed_then_follows_the_load():
    clocks = Clocks(others=1.0)
    gate = clocks.gate(period=0.25)
    gate.allow()
    clocks.advance(0.3)
    assert not gate.allow()                        # the other core is busy
    clocks.others = 0.0
    clocks.advance(0.1)                            # not a whole period yet: still the old window
    assert not gate.allow()
    clocks.advance(0.2)                            # a new window, quiet all through
    assert gate.allow() and gate.others == pytest.approx(0.0, abs=1e-9)
    clocks.others = 1.0
    clocks.advance(0.3)
    assert not gate.allow()


def test_more_cores_leave_room_for_more_others():
    clocks = Clocks(others=1.5)
    gate = clocks.gate(cores=4)                    # 4 - 1 - 0.75 = 2.25 cores for others
    gate.allow()
    clocks.advance(0.5)
    assert gate.allow()


def test_one_core_never_pairs_nor_a_machine_whose_load_cannot_be_read():
    clocks = Clocks(others=0.0)
    one = clocks.gate(cores=1)
    one.allow()
    clocks.advance(0.5)
    assert not one.allow()
    now = [0.0]
    blind = idle.SpareCore(2, machine=lambda: None, clock=lambda: now[0])
    for _ in range(3):
        assert not blind.allow()
        now[0] += 1.0
    assert blind.others is None


def test_machine_seconds_is_the_busy_time_of_proc_stat():
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except OSError:
        pytest.skip("no /proc/stat")
    got = idle.machine_seconds()
    after = time.monotonic()
    want = (sum(fields) - fields[3] - fields[4]) / idle._TICKS
    assert want <= got <= want + 2 * 2 * max(1.0, time.monotonic() - after + 0.05)
