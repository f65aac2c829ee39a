"""The web application of `slidenet serve`: Starlette routes around one `Explainer`.

    GET  /                  the page (templates/serve.html)
    GET  /static/...        its stylesheet and script
    GET  /api/model         the model: pattern, INPUT, classes, layers
    POST /api/predict       image bytes -> {"classes", "probabilities"}
    POST /api/look          image bytes -> the prediction and every layer's output
    POST /api/unit          image bytes, ?layer=&row=&col=&channel= -> where a unit comes from
    GET  /api/slide         ?n=&f=&s=&p= -> a filter sliding over a padded input
    GET  /api/patches       ?layer=&channel= -> the test images that excite a channel most

docs/serve.md has the JSON of each. Images are the raw bytes of a PNG or JPEG file as the
request body, at most MAX_UPLOAD bytes; decoding them is gated by its cost (`Decodes`). Every
refusal is JSON, {"error": message}, with a 4xx status (503 when memory or the decode slot is
short); `guard.Guard` refuses other hosts, long URLs and cross-site API requests. The app serves the one model it was made with: no request names a file.
"""
import asyncio
import ctypes

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from slidenet.data import decode_image
from slidenet.data.images import decode_cost
from slidenet.errors import DataError, ModelFileError, SlidenetError
from slidenet.serve import pages
from slidenet.serve.explain import PATCHES, Explainer
from slidenet.serve.guard import Guard
from slidenet.storage.limits import BIG_DECODE, MAX_UPLOAD, MAX_WAITING

SECTIONS = (("input", "Input"), ("layers", "Every layer"), ("unit", "One unit"),
            ("slide", "Slide a filter"), ("patches", "What a channel looks for"))
# The page loads nothing from elsewhere; the browser is told so, too.
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                      "style-src 'self'; script-src 'self'; object-src 'none'; "
                                      "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


class Refused(Exception):
    """A request the app turns down: `status` and a message for the person at the page."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class Decodes:
    """How many uploads are decoded at once. An upload's cost is known from its header
    (`decode_cost`); one costing more than BIG_DECODE waits for the one big slot, so a few
    large uploads cannot together take the machine's memory, while small ones (a drawing, a
    photo of a digit) pass at once. Past MAX_WAITING big ones waiting, the next is refused
    (503) rather than held with its body in memory. After a big decode the freed memory is
    given back to the system (`trim`)."""

    def __init__(self):
        self.big = None             # asyncio.Semaphore(1), made in the server's event loop
        self.waiting = 0

    async def decode(self, body, shape):
        cost = await run_in_threadpool(decode_cost, body, "the file")
        if cost <= BIG_DECODE:
            return await run_in_threadpool(decode_image, body, shape, "the file")
        if self.big is None:
            self.big = asyncio.Semaphore(1)
        if self.waiting >= MAX_WAITING:
            raise Refused(503, f"{MAX_WAITING} large images are already waiting to be read; "
                               "try again in a moment, or send a smaller one")
        self.waiting += 1
        try:
            await self.big.acquire()
        finally:
            self.waiting -= 1
        try:
            return await run_in_threadpool(decode_image, body, shape, "the file")
        finally:
            self.big.release()
            trim()


def trim():
    """Hand the memory freed by a large decode back to the system (glibc keeps it otherwise,
    and the server's resident size never comes down); elsewhere nothing to do."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


async def read_image(request, explainer, decodes):
    """The request body, decoded into the model's INPUT (uint8 (H, W, D)).

    Refused with 413 as soon as Content-Length, or the bytes received so far, pass MAX_UPLOAD
    (the rest is not read); 400 for no body, or a client that went away mid-upload; 415 for
    bytes that are not a PNG or JPEG or cost more to decode than the input budget.
    `?invert=1` gives 255 - pixel.
    """
    too_large = Refused(413, f"the image is larger than {MAX_UPLOAD // 2**20} MB; send a "
                             "smaller PNG or JPEG")
    claimed = request.headers.get("content-length")
    if claimed is not None and (not claimed.isdigit() or int(claimed) > MAX_UPLOAD):
        raise too_large if claimed.isdigit() else Refused(400, "Content-Length is not a number")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_UPLOAD:
                raise too_large
    except ClientDisconnect:
        # The sender gave up mid-upload: nobody is left to answer, and nothing went wrong here.
        raise Refused(400, "the upload was cut off") from None
    if not body:
        raise Refused(400, "send the bytes of a PNG or JPEG file as the request body")
    try:
        pixels = await decodes.decode(bytes(body), explainer.model.input_shape)
    except DataError as err:
        raise Refused(415, str(err)) from None
    # ?invert=1: 255 - pixel, as `slidenet predict --invert` (dark-on-light drawings for a
    # model trained on light-on-dark images).
    return 255 - pixels if request.query_params.get("invert") in ("1", "true") else pixels


def whole(request, name, default=None):
    """Query parameter `name` as an int; Refused (400) when missing or not a whole number."""
    text = request.query_params.get(name)
    if text is None and default is not None:
        return default
    try:
        return int(text)
    except (TypeError, ValueError):
        raise Refused(400, f"?{name}= must be a whole number, not {text!r}") from None


def create_app(model, data=None, model_path="", trusted_hosts=None):
    """The Starlette app for a loaded `slidenet.Model`.

    data: the data spec of the top patches (default: the model's own); model_path: shown on
    the page; trusted_hosts: Host headers to accept (None: any). A server bound to loopback
    accepts only loopback names, so a web page elsewhere cannot reach it by DNS rebinding.
    """
    explainer = Explainer(model, data)
    decodes = Decodes()
    described = explainer.describe()
    templates = Jinja2Templates(env=pages.environment())

    async def page(request):
        stats = (("classes", str(len(described["classes"]))),
                 ("input", "x".join(map(str, described["input_shape"]))),
                 ("layers", str(len(described["layers"]))),
                 ("parameters", f'{described["params"]:,}'))
        return templates.TemplateResponse(request, "serve.html", {
            "inline_style": False, "pattern": described["pattern"], "model_path": model_path,
            "model": described, "stats": stats, "sections": SECTIONS,
            "max_upload": MAX_UPLOAD, "per_channel": PATCHES}, headers=HEADERS)

    async def model_info(request):
        return JSONResponse(described)

    async def predict(request):
        pixels = await read_image(request, explainer, decodes)
        return JSONResponse(await run_in_threadpool(explainer.predict, pixels))

    async def look(request):
        pixels = await read_image(request, explainer, decodes)
        return JSONResponse(await run_in_threadpool(explainer.look, pixels))

    async def unit(request):
        layer = request.query_params.get("layer", "")
        row, col, channel = (whole(request, name, 0) for name in ("row", "col", "channel"))
        pixels = await read_image(request, explainer, decodes)
        return JSONResponse(await run_in_threadpool(explainer.unit, pixels, layer, row, col,
                                                    channel))

    async def slide(request):
        n, f, s, p = (whole(request, name) for name in "nfsp")
        return JSONResponse(explainer.slide(n, f, s, p))

    async def patches(request):
        layer = request.query_params.get("layer", "")
        return JSONResponse(await run_in_threadpool(explainer.patches, layer,
                                                    whole(request, "channel", 0)))

    async def refused(request, err):
        return JSONResponse({"error": str(err)}, status_code=err.status,
                            headers={"Connection": "close"} if err.status == 413 else None)

    async def mistaken(request, err):
        # A mistake in what the request asks for (a layer that does not exist, a stride that
        # does not tile): slidenet's own message.
        return JSONResponse({"error": str(err)}, status_code=400)

    async def damaged(request, err):
        # The model itself cannot answer (its scores overflow): the server's fault, not the
        # request's.
        return JSONResponse({"error": str(err)}, status_code=500)

    async def short_of_memory(request, err):
        # The machine could not give this request its memory; the next one may well fit.
        trim()
        return JSONResponse({"error": "the server is short of memory for this request; try "
                                      "again, or with a smaller image"}, status_code=503)

    async def failed(request, err):
        # A bug: JSON like every other answer; Starlette still logs its traceback.
        return JSONResponse({"error": f"the server failed ({type(err).__name__}); its log has "
                                      "the details"}, status_code=500)

    async def http_error(request, err):
        return JSONResponse({"error": err.detail}, status_code=err.status_code,
                            headers=err.headers)

    routes = [Route("/", page), Route("/api/model", model_info),
              Route("/api/predict", predict, methods=["POST"]),
              Route("/api/look", look, methods=["POST"]),
              Route("/api/unit", unit, methods=["POST"]),
              Route("/api/slide", slide), Route("/api/patches", patches),
              Mount("/static", StaticFiles(directory=str(pages.STATIC)), name="static")]
    app = Starlette(routes=routes, middleware=[Middleware(Guard, trusted_hosts=trusted_hosts)],
                    exception_handlers={Refused: refused, ModelFileError: damaged,
                                        SlidenetError: mistaken, HTTPException: http_error,
                                        MemoryError: short_of_memory, Exception: failed})
    app.state.explainer = explainer
    return app
