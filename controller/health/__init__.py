"""Instance health and traffic policy per route (issue 12): values, rendering, decisions.

`model` holds the validated per-route values, `render` turns them into backend lines and
server options (pure), `decide` holds the controller's choices made from observed health
(ejection cap, a route that is down, draining). The observed state itself is parsed by
`controller.runtime.parse.parse_server_health`.
"""
