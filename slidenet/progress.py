"""The one progress bar: tqdm on a terminal, silent when stderr is redirected (logs, tests, pipes)."""
import sys


def progress(total, desc, unit="it", show=None, file=None):
    """A tqdm bar over `total` units, cleared when done; a no-op bar when stderr is no terminal.

    show: True or False overrides that test; file: where the bar goes (default stderr). Under
    mpiexec, rank 0 alone shows it, on stdout, which mpiexec passes on in order with the log.
    """
    from tqdm import tqdm
    show = sys.stderr.isatty() if show is None else show
    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not show, file=file)
