"""`slidenet serve MODEL`: a live explainer of one model in the browser.

    pages       the Jinja2 environment, shared with `slidenet report` (needs Jinja2 only)
    explain     what the page shows, worked out from the model (needs no web server)
    app         the Starlette application: the page, /static and the /api endpoints

The endpoints are documented in docs/serve.md. Importing this package imports nothing beyond
the standard library; `app` needs the `serve` extra: pip install 'slidenet[serve]'.
"""
