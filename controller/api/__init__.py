"""The REST API (aiohttp): gateways, rollouts, the controller's state, health and metrics.

`app` assembles it; `gateways` holds the gateway handlers, `body` reads requests,
`errors` is the one translator of failures to HTTP, `security` and `tokens` decide who may
call, `connections` bounds connections and time, `openapi` describes it all.
"""

from controller.api.app import create_app
from controller.api.body import dry_run_flag, read_json_body
from controller.api.errors import ApiError

__all__ = ["ApiError", "create_app", "dry_run_flag", "read_json_body"]
