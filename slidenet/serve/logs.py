"""The server's log, kept readable when the world misbehaves.

When the process runs out of file descriptors, asyncio logs `socket.accept() out of system
resource` with a traceback for every connection it cannot take: a flood of clients once wrote
300,000 tracebacks (122 MB) in 25 seconds. `Repeats` lets the first record of a kind through
whole, then one line per EVERY seconds saying how many like it were left out.
"""
import logging
import time

EVERY = 10.0                # seconds between two reports of the same record
LOGGERS = ("asyncio", "uvicorn.error")


class Repeats(logging.Filter):
    """A logging filter: the first record of each (logger, message) passes with its
    traceback; repeats pass at most once per `every` seconds, without it, counting the rest."""

    def __init__(self, every=EVERY, clock=time.monotonic):
        super().__init__()
        self.every, self.clock = every, clock
        self.seen = {}              # (logger, message) -> [time of the last shown, left out]

    def filter(self, record):
        key = (record.name, str(record.msg).split("\n", 1)[0])
        now = self.clock()
        entry = self.seen.get(key)
        if entry is None:
            self.seen[key] = [now, 0]
            return True
        if now - entry[0] < self.every:
            entry[1] += 1
            return False
        left_out, entry[:] = entry[1], [now, 0]
        record.msg = f"{key[1]} (again; {left_out} more like it in {self.every:g} s not shown)"
        record.args, record.exc_info, record.exc_text, record.stack_info = None, None, None, None
        return True


def quiet():
    """Put one `Repeats` filter on the loggers that repeat themselves under load; returns it."""
    repeats = Repeats()
    for name in LOGGERS:
        logging.getLogger(name).addFilter(repeats)
    return repeats
