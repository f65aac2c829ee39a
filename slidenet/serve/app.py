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
request body, at most MAX_UPLOAD bytes. Every refusal is JSON, {"error": message}, with a 4xx
status. The app serves the one model it was made with: no request names a file.
"""
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from slidenet.data import decode_image
from slidenet.errors import DataError, SlidenetError
from slidenet.serve import pages
from slidenet.serve.explain import PATCHES, Explainer
from slidenet.storage.limits import MAX_UPLOAD

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


async def read_image(request, explainer):
    """The request body, decoded into the model's INPUT (uint8 (H, W, D)).

    Refused with 413 as soon as Content-Length, or the bytes received so far, pass MAX_UPLOAD
    (the rest is not read); 400 for no body; 415 for bytes that are not a PNG or JPEG.
    """
    too_large = Refused(413, f"the image is larger than {MAX_UPLOAD // 2**20} MB; send a "
                             "smaller PNG or JPEG")
    claimed = request.headers.get("content-length")
    if claimed is not None and (not claimed.isdigit() or int(claimed) > MAX_UPLOAD):
        raise too_large if claimed.isdigit() else Refused(400, "Content-Length is not a number")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_UPLOAD:
            raise too_large
    if not body:
        raise Refused(400, "send the bytes of a PNG or JPEG file as the request body")
    try:
        return await run_in_threadpool(decode_image, bytes(body), explainer.model.input_shape,
                                       "the file")
    except DataError as err:
        raise Refused(415, str(err)) from None


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
        pixels = await read_image(request, explainer)
        return JSONResponse(await run_in_threadpool(explainer.predict, pixels))

    async def look(request):
        pixels = await read_image(request, explainer)
        return JSONResponse(await run_in_threadpool(explainer.look, pixels))

    async def unit(request):
        layer = request.query_params.get("layer", "")
        row, col, channel = (whole(request, name, 0) for name in ("row", "col", "channel"))
        pixels = await read_image(request, explainer)
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

    async def http_error(request, err):
        return JSONResponse({"error": err.detail}, status_code=err.status_code,
                            headers=err.headers)

    routes = [Route("/", page), Route("/api/model", model_info),
              Route("/api/predict", predict, methods=["POST"]),
              Route("/api/look", look, methods=["POST"]),
              Route("/api/unit", unit, methods=["POST"]),
              Route("/api/slide", slide), Route("/api/patches", patches),
              Mount("/static", StaticFiles(directory=str(pages.STATIC)), name="static")]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=trusted_hosts)] \
        if trusted_hosts else []
    app = Starlette(routes=routes, middleware=middleware,
                    exception_handlers={Refused: refused, SlidenetError: mistaken,
                                        HTTPException: http_error})
    app.state.explainer = explainer
    return app
