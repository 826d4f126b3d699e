"""Instance health and traffic policy per route (issue 12): values, rendering, decisions.

`model` holds the validated per-route values, `render` turns them into backend lines and
server options (pure), `decide` holds the controller's choices made from observed health
(ejection cap, a route that is down, draining). `watch` acts on them, visiting the gateways
that `events` (HAProxy's log) names; `stat` parses what it reads (`show stat`), `memory` keeps
what a restarted controller needs (`health.json`).
"""
