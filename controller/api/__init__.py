"""The REST API (aiohttp): gateways, rollouts, the controller's state, health and metrics.

`app` assembles it; `gateways` holds the gateway handlers, `body` reads requests,
`errors` is the one translator of failures to HTTP, `security` and `tokens` decide who may
call, `connections` bounds connections and time, `openapi` describes it all. Import from
those modules: this package imports nothing itself, so the CLI can use `tokens` without
loading the server.
"""
