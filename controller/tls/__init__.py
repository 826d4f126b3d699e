"""TLS for gateways: certificate bundles, their store, crt-lists, and changing them live.

`pem` checks what users upload, `store` keeps it (0600, in the state dir), `crtlist`
renders and diffs crt-lists (pure), `manager` drives HAProxy's Runtime API, `metrics`
exports expiry. The wiring into gateways (bind lines, config fields) uses these.
"""
