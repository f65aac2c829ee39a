"""`slidenet serve [MODEL | RUNS]`: a slidenet page in the browser, until Ctrl-C.

    slidenet serve                  the pattern playground: write a net, see every shape
    slidenet serve MODEL            the live explainer of one trained model
    slidenet serve RUNS/            the curves of the runs in a folder, side by side

`needs_extra`, `trusted_hosts`, `listen`, `address`, `warn_if_open` and `server` are shared with
`slidenet train --live` (slidenet.serve.live).
"""
import importlib.util
import ipaddress
import os
import socket
import sys

from slidenet.errors import SlidenetError
from slidenet.model import load

LOOPBACK_NAMES = ("localhost",)


def register(subparsers):
    p = subparsers.add_parser(
        "serve", help="an interactive explainer of a model in the browser; with no model, "
                      "the pattern playground",
        description="Serve a local web page that explains MODEL live: draw or drop an image, "
                    "see every layer's maps, click a unit to see where it comes from, slide a "
                    "filter, see the patches a channel looks for, write a net. With no MODEL, "
                    "the pattern playground: write a net, see every shape and number. With a "
                    "folder of runs, their curves side by side. Ctrl-C stops it.")
    p.add_argument("model", nargs="?",
                   help="a model file written by `slidenet train` (model.npz, best.npz), or a "
                        "folder of runs (each a folder with history.json); none: the playground")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (8000; 0 picks a free one)")
    p.add_argument("--data", help="data spec of the top patches (default: the data the model "
                                  "was trained on)")
    p.set_defaults(func=run)


def is_loopback(host):
    """Whether `host` is reachable only from this machine."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen(host, port):
    """A bound, listening TCP socket; a SlidenetError that says what to change when it cannot
    be had (port taken, address not this machine's)."""
    if not 0 <= port <= 65535:
        raise SlidenetError(f"--port must be from 0 to 65535, not {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise SlidenetError(f"--host {host}: no such address ({err.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        sock.close()
        hint = f"; try --port {port + 1}, or --port 0 for any free one" if port else ""
        raise SlidenetError(f"cannot listen on {host} port {port}: {err.strerror}{hint}") \
            from None
    return sock


def _more_descriptors():
    """Raise this process's soft limit of open files to its hard limit: each connection holds
    one, and a soft limit of 1,024 is soon reached by a busy page. (Beyond it the log says so
    once every few seconds, `serve.logs`.)"""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def needs_extra(command="slidenet serve"):
    """SlidenetError unless the serve extra is installed."""
    for package in ("starlette", "uvicorn", "jinja2", "matplotlib", "PIL"):
        if importlib.util.find_spec(package) is None:
            raise SlidenetError(f"{command} needs Starlette, uvicorn, Jinja2, matplotlib "
                                f"and Pillow, and {package} is not installed: "
                                "pip install 'slidenet[serve]'")


def trusted_hosts(host):
    """The Host headers a server on `host` answers: loopback names only for a loopback
    server, so a page on another site cannot reach it through a name it points at 127.0.0.1
    (DNS rebinding); None (any) otherwise."""
    return sorted({host, "127.0.0.1", "localhost", "::1"}) if is_loopback(host) else None


def address(sock):
    """http://HOST:PORT/ of a listening socket."""
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def warn_if_open(host, what="this model and its page"):
    if not is_loopback(host):
        print(f"slidenet serve: warning: listening on {host} exposes {what} to every machine "
              "that can reach this one, with no password; use the default --host 127.0.0.1 to "
              "keep it to this machine", file=sys.stderr, flush=True)


def server(app):
    """A quiet uvicorn Server for `app` that lets open requests finish for up to 3 s."""
    import uvicorn

    from slidenet.serve import logs
    from slidenet.storage.limits import MAX_HEAD

    # h11 reads request heads up to MAX_HEAD, so a long URL gets the app's JSON 414 instead of
    # h11's own refusal, sent while the client is still writing and so lost in a reset.
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=3, http="h11",
                            h11_max_incomplete_event_size=MAX_HEAD)
    logs.quiet()
    _more_descriptors()
    return uvicorn.Server(config)


def run(args):
    needs_extra()
    from slidenet.serve.app import create_app, create_playground_app

    trusted = trusted_hosts(args.host)
    if args.model is None:
        if args.data:
            raise SlidenetError("--data belongs to a model (its top patches); the playground "
                                "has none: give a MODEL, or drop --data")
        app, what, exposed = create_playground_app(trusted), "the playground", "this page"
    elif os.path.isdir(args.model):
        if args.data:
            raise SlidenetError(f"--data belongs to a model (its top patches); {args.model} is "
                                "a folder of runs: drop --data")
        from slidenet.serve.runs import create_runs_app
        app, what = create_runs_app(args.model, trusted), f"the runs in {args.model}"
        exposed = "these runs and their page"
    else:
        model = load(args.model)
        app = create_app(model, args.data, model_path=args.model, trusted_hosts=trusted)
        what, exposed = args.model, "this model and its page"
    sock = listen(args.host, args.port)
    warn_if_open(args.host, exposed)
    print(f"slidenet serve: {what} on {address(sock)}  (Ctrl-C stops it)", flush=True)
    try:
        server(app).run(sockets=[sock])
    except KeyboardInterrupt:
        pass            # uvicorn raises the Ctrl-C it handled again once it has shut down
    finally:
        sock.close()
    print("slidenet serve: stopped", flush=True)
    return 0
