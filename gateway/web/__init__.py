"""The aiohttp layer: the request pipeline, the error boundary, the listeners, the browser
login pages and the admin APIs."""
