"""The one progress bar: tqdm on a terminal or in a notebook, silent when stderr is redirected
(logs, tests, pipes)."""
import sys
import warnings


def in_notebook():
    """True inside a Jupyter kernel (a notebook, JupyterLab, VS Code's notebooks)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return getattr(shell, "kernel", None) is not None


def progress(total, desc, unit="it", show=None, file=None):
    """A tqdm bar over `total` units, cleared when done; a no-op bar when stderr is no terminal.

    show: True or False overrides that test; file: where the bar goes (default stderr). Under
    mpiexec, rank 0 alone shows it, on stdout, which mpiexec passes on in order with the log.
    In a notebook the bar is tqdm.auto's: a widget where ipywidgets is installed, else text.
    """
    notebook = in_notebook()
    if notebook:
        with warnings.catch_warnings():     # "IProgress not found": the text bar is fine
            warnings.simplefilter("ignore")
            from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    show = (notebook or sys.stderr.isatty()) if show is None else show
    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not show, file=file)
