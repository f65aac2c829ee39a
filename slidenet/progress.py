"""The one progress bar: tqdm on a terminal, silent when stderr is redirected (logs, tests, pipes)."""
import sys


def progress(total, desc, unit="it"):
    """A tqdm bar over `total` units, cleared when done; a no-op bar when stderr is no terminal."""
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not sys.stderr.isatty())
