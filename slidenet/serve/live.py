"""`slidenet train --live`: training with a web page that shows it, served from a thread.

    GET  /                  the live page while training; the explainer of best.npz after it
    GET  /live              the live page, always
    GET  /api/progress      ?since=STEP -> the run so far (Watcher.progress)
    GET  /api/pictures      conv1's filters, fixed validation images, their maps and guesses
    GET  /api/epoch         the last epoch's confusion matrix and worst-classified images
    POST /api/summary       (the playground's, for the explainer's playground view)

The server runs in a thread of the training process (rank 0's, under mpiexec) and asks a
`watch.Watcher` what to show; the Watcher keeps the training thread's part small. Once training
has finished, the app behind / becomes `create_app` of best.npz: every view and endpoint of
`slidenet serve MODEL`. docs/serve.md has the JSON.
"""
import threading

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.templating import Jinja2Templates

from slidenet.serve import pages
from slidenet.serve.app import HEADERS, SUMMARY, create_app, site, whole

SECTIONS = (("curves", "Curves"), ("filters", "Filters"), ("samples", "Validation images"),
            ("epoch", "After each epoch"))


class Behind:
    """An ASGI app that hands every request to `app`, which can be swapped while serving."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)


def create_live_app(watcher, trusted_hosts=None):
    """The Starlette app of a watched run. `app.state.behind.app` is what / serves; `explain`
    (below) swaps in the explainer when training has finished."""
    templates = Jinja2Templates(env=pages.environment())

    async def page(request):
        progress = watcher.progress(since=2**62)
        return templates.TemplateResponse(request, "live.html", {
            "inline_style": False, "pattern": progress["pattern"] or "", "stats": (),
            "sections": SECTIONS}, headers=HEADERS)

    async def progress(request):
        return JSONResponse(watcher.progress(since=whole(request, "since", 0)))

    async def pictures(request):
        return JSONResponse(await run_in_threadpool(watcher.pictures))

    async def epoch(request):
        return JSONResponse(await run_in_threadpool(watcher.epoch_view))

    behind = Behind(site([Route("/", page), SUMMARY]))
    app = site([Route("/live", page), Route("/api/progress", progress),
                Route("/api/pictures", pictures), Route("/api/epoch", epoch),
                Mount("", app=behind)], trusted_hosts)
    app.state.behind = behind
    return app


def explain(app, model, model_path):
    """From now on / and the explainer's endpoints are those of `slidenet serve MODEL`."""
    app.state.behind.app = create_app(model, model_path=model_path)


class Serving:
    """A uvicorn server for `app` on the listening socket `sock`, in a daemon thread."""

    def __init__(self, app, sock):
        from slidenet.commands.serve import server
        self.sock = sock
        self.server = server(app)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       name="slidenet-live", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=5)
        self.sock.close()
        return False


def train_live(config, resume, host, port, train, out=print):
    """`train(config, resume=resume, observer=...)` with the live page on host:port; after a
    finished run, the page explains best.npz until Ctrl-C. Returns the history.

    Ctrl-C while training stops the server and raises the training's TrainingInterrupted, as
    without --live; Ctrl-C once training has finished returns normally. Under mpiexec only
    rank 0 serves (the caller runs the other ranks without this).
    """
    import os

    from slidenet.commands.serve import address, listen, trusted_hosts, warn_if_open
    from slidenet.model import load
    from slidenet.serve.watch import Watcher

    watcher = Watcher(epochs=config.epochs)
    app = create_live_app(watcher, trusted_hosts(host))
    sock = listen(host, port)
    warn_if_open(host, "this training run and its page")
    url = address(sock)
    out(f"slidenet train: watch it learn on {url}  (Ctrl-C stops training)", flush=True)
    with Serving(app, sock):
        try:
            history = train(config, resume=resume, observer=watcher)
        except BaseException:
            watcher.finish(None)
            raise
        best = os.path.join(watcher.watched.config.out if watcher.watched else config.out,
                            "best.npz")
        if not os.path.isfile(best):
            watcher.finish(None)
            return history
        explain(app, load(best), best)
        watcher.finish(best)
        out(f"slidenet train: finished; {url} now explains {best}  (Ctrl-C stops it)",
            flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    out("slidenet train: stopped", flush=True)
    return history
