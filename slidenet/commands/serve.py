"""`slidenet serve MODEL`: the live explainer of one model, in the browser, until Ctrl-C."""
import importlib.util
import ipaddress
import socket
import sys

from slidenet.errors import SlidenetError
from slidenet.model import load

LOOPBACK_NAMES = ("localhost",)


def register(subparsers):
    p = subparsers.add_parser(
        "serve", help="an interactive explainer of a model in the browser",
        description="Serve a local web page that explains MODEL live: draw or drop an image, "
                    "see every layer's maps, click a unit to see where it comes from, slide a "
                    "filter, see the patches a channel looks for. Ctrl-C stops it.")
    p.add_argument("model", help="a model file written by `slidenet train` (model.npz, best.npz)")
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


def run(args):
    for package in ("starlette", "uvicorn", "jinja2", "matplotlib", "PIL"):
        if importlib.util.find_spec(package) is None:
            raise SlidenetError(f"slidenet serve needs Starlette, uvicorn, Jinja2, matplotlib "
                                f"and Pillow, and {package} is not installed: "
                                "pip install 'slidenet[serve]'")
    import uvicorn

    from slidenet.serve import logs
    from slidenet.serve.app import create_app
    from slidenet.storage.limits import MAX_HEAD

    model = load(args.model)
    loopback = is_loopback(args.host)
    # A loopback server answers only requests addressed to a loopback name, so a page on
    # another site cannot reach it through a name it points at 127.0.0.1 (DNS rebinding).
    trusted = sorted({args.host, "127.0.0.1", "localhost", "::1"}) if loopback else None
    app = create_app(model, args.data, model_path=args.model, trusted_hosts=trusted)
    sock = listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    if not loopback:
        print(f"slidenet serve: warning: listening on {args.host} exposes this model and its "
              "page to every machine that can reach this one, with no password; use the "
              "default --host 127.0.0.1 to keep it to this machine", file=sys.stderr,
              flush=True)
    print(f"slidenet serve: {args.model} on http://{shown}:{port}/  (Ctrl-C stops it)",
          flush=True)
    # h11 reads request heads up to MAX_HEAD, so a long URL gets the app's JSON 414 instead of
    # h11's own refusal, sent while the client is still writing and so lost in a reset.
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=3, http="h11",
                            h11_max_incomplete_event_size=MAX_HEAD)
    logs.quiet()
    _more_descriptors()
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass            # uvicorn raises the Ctrl-C it handled again once it has shut down
    finally:
        sock.close()
    print("slidenet serve: stopped", flush=True)
    return 0
