"""The one progress bar: tqdm on a terminal, silent when stderr is redirected (logs, tests, pipes)."""
import sys


def progress(total, desc, unit="it", show=None):
    """A tqdm bar over `total` units, cleared when done; a no-op bar when stderr is no terminal.

    show: True or False overrides that test (under mpiexec: rank 0 alone, when mpiexec's own
    output is a terminal).
    """
    from tqdm import tqdm
    show = sys.stderr.isatty() if show is None else show
    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not show)
