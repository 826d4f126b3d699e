"""`GET /api/v1/openapi.json`: an OpenAPI 3.1 description generated from the pydantic models.

Bodies are the models' own JSON schemas (`Gateway`, `Route`, `RolloutSpec`). The model's
string types are parsed by functions (`parse_percent`, `parse_address`, …), which pydantic
cannot see into; `_InputSchema` describes their accepted forms, keyed by those very
functions, so a schema can never silently describe a type whose parser changed name.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any, get_args

from aiohttp import web
from pydantic import BaseModel, BeforeValidator
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema
from pydantic_core import core_schema

from controller import model
from controller.api.certificates import CERTIFICATES
from controller.fleet.api import NODES
from controller.health import model as health
from controller.rollouts.spec import RolloutSpec

Schema = dict[str, Any]
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_NAME_PORT = rf"{_LABEL}(?:\.{_LABEL})*\.?:[0-9]{{1,5}}"
_ADDRESS = r"(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|\[[0-9A-Fa-f:.]{2,45}\]):[0-9]{1,5}"


def parser_of(alias: Any) -> Callable[..., Any]:
    for meta in get_args(alias)[1:]:
        if isinstance(meta, BeforeValidator):
            return meta.func
    raise TypeError(f"{alias} has no BeforeValidator")


INPUT_FORMATS: dict[Callable[..., Any], Schema] = {
    parser_of(model.Name): {
        "type": "string",
        "pattern": f"^(?:{model.NAME_PATTERN})$",  # JSON Schema patterns search
        "maxLength": 63,
    },
    parser_of(model.Percent): {
        "anyOf": [
            {"type": "string", "pattern": r"^(?:100|[0-9]{1,2})(?:\.[0-9]{1,2})?%$"},
            {"type": "number", "minimum": 0, "maximum": 100},
        ],
        "description": "a percentage, exact to 0.01: 90, '90%', '2.5%'",
    },
    parser_of(model.Instance): {
        "type": "string",
        "pattern": f"^(?:{_ADDRESS}|{_NAME_PORT})$",
        "maxLength": 260,
        "description": "IP literal and port: '10.0.0.5:8080', '[::1]:9000'; or a DNS name "
        "and port, resolved by the controller: 'api-1.internal:8080'",
    },
    parser_of(model.Bind): {
        "type": "string",
        "pattern": rf"^(?:\*:[0-9]{{1,5}}|{_ADDRESS})$",
        "maxLength": 64,
        "description": "IP literal (or *) and port",
    },
    parser_of(model.Balance): {
        "type": "string",
        "maxLength": 80,
        "description": "roundrobin, static-rr, leastconn, first, random, source, uri, "
        "'url_param <name>' or 'hdr(<name>)'",
    },
    parser_of(model.Condition): {
        "type": "string",
        "description": "a condition, e.g. 'Firefox or has cookie beta' (docs/routing.md)",
    },
    parser_of(model.Host): {"type": "string", "maxLength": 253, "description": "a host name"},
    parser_of(health.Duration): {
        "type": "string",
        "pattern": r"^[0-9]{1,7}(?:ms|s|m|h)$",
        "description": "a duration with its unit: '500ms', '2s', '1m', '1h'",
    },
    parser_of(health.Percent): {
        "anyOf": [
            {"type": "string", "pattern": r"^(?:100|[0-9]{1,2})(?:\.[0-9]{1,2})?%$"},
            {"type": "number", "minimum": 0, "maximum": 100},
        ],
        "description": "a percentage, exact to 0.01: 50, '50%'",
    },
    health.check_check_path: {"type": "string", "maxLength": 402, "description": "'/healthz'"},
    health.check_check_host: {"type": "string", "maxLength": 259, "description": "a host name"},
    health.check_expect_status: {
        "anyOf": [{"type": "string", "maxLength": 127}, {"type": "integer"}],
        "description": "status codes and ranges: '200-399', '200,204'",
    },
    health.check_retry_on: {
        "anyOf": [{"enum": list(health.RETRY_ON)}, {"type": "integer"}],
        "description": "a retry-on value of HAProxy 2.6",
    },
}


def input_format(alias: Any) -> Schema:
    """The JSON schema of what one of the model's parsed types (`model.Bind`, …) accepts."""
    return dict(INPUT_FORMATS[parser_of(alias)])


class _InputSchema(GenerateJsonSchema):
    def function_before_schema(
        self, schema: core_schema.BeforeValidatorFunctionSchema
    ) -> dict[str, Any]:
        function = schema["function"]["function"]
        if function is health.checks_off:  # `health_check: none`, or the check itself
            return {"anyOf": [{"const": "none"}, self.generate_inner(schema["schema"])]}
        known = INPUT_FORMATS.get(function)
        return dict(known) if known is not None else super().function_before_schema(schema)


def _error(description: str) -> Schema:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


_ERRORS = {
    "400": "invalid input; `problems` name the fields",
    "401": "no valid token",
    "403": "cross-origin write, or a read token on a write",
    "404": "no such gateway, route or rollout",
    "408": "the body arrived too slowly",
    "409": "conflicts with the current state",
    "412": "If-Match does not match",
    "413": "body larger than 1 MiB",
    "415": "a write not sent as application/json",
    "421": "a Host this API does not answer to",
    "503": "HAProxy or the store cannot do it now; nothing changed",
}
_READ_ERRORS = ("400", "401", "404", "421")
_WRITE_ERRORS = ("400", "401", "403", "404", "408", "409", "412", "413", "415", "421", "503")

ERROR_SCHEMA: Schema = {
    "type": "object",
    "required": ["error", "problems"],
    "properties": {
        "error": {"type": "string"},
        "problems": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}
_TEXT_OR_NULL: Schema = {"type": ["string", "null"]}
CHANGE: Schema = {
    "type": "object",
    "description": "one field of one gateway or route that differs, as display text",
    "required": ["gateway", "route", "field", "before", "after", "live", "text"],
    "properties": {
        "gateway": {"type": "string"},
        "route": _TEXT_OR_NULL,
        "field": {
            "type": "string",
            "description": "'gateway' or 'route' when one is added "
            "or removed, else the field: weight, instances, condition, bind, …",
        },
        "before": _TEXT_OR_NULL,
        "after": _TEXT_OR_NULL,
        "live": {"type": "boolean", "description": "HAProxy can take it without a reload"},
        "text": {"type": "string", "description": "e.g. 'shop.canary: weight 10% → 20%'"},
    },
}
APPLY_RESULT: Schema = {
    "type": "object",
    "required": ["method", "dry_run", "duration_ms", "changes", "plan", "revision"],
    "properties": {
        "method": {
            "enum": ["none", "runtime", "reload"],
            "description": "how HAProxy took the change (a dry run: how it would)",
        },
        "dry_run": {"type": "boolean", "description": "true: nothing was stored or applied"},
        "duration_ms": {
            "type": "number",
            "description": "until applied; a dry run: checking and planning",
        },
        "changes": {
            "type": "array",
            "items": {"$ref": "#/components/schemas/Change"},
            "description": "what changes, per gateway and route",
        },
        "plan": {
            "type": "array",
            "items": {"type": "string"},
            "description": "how: the runtime commands, or the reasons for a reload in words",
        },
        "revision": {
            "type": "integer",
            "description": "the desired state's revision (a dry run: the one planned on)",
        },
    },
}


CERTIFICATE: Schema = {
    "type": "object",
    "required": ["name", "subject", "issuer", "sans", "not_before", "not_after"],
    "properties": {
        "name": {"type": "string"},
        "subject": {"type": "string"},
        "issuer": {"type": "string"},
        "sans": {"type": "array", "items": {"type": "string"}},
        "serial": {"type": "string"},
        "not_before": {"type": "string", "format": "date-time"},
        "not_after": {"type": "string", "format": "date-time"},
        "sha256_fingerprint": {"type": "string"},
        "key_type": {"type": "string"},
        "chain_length": {"type": "integer"},
        "live": {"enum": ["replaced", "loaded", "stored"]},
        "served": {"type": ["boolean", "null"]},
    },
}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema, description: str = "") -> Schema:
    return {"description": description or "OK", "content": {"application/json": {"schema": schema}}}


def _param(name: str, where: str, schema: Schema, required: bool = False) -> Schema:
    return {"name": name, "in": where, "required": required or where == "path", "schema": schema}


def _op(
    summary: str,
    ok: dict[str, Schema],
    errors: tuple[str, ...],
    params: list[Schema] | None = None,
    body: Schema | None = None,
) -> Schema:
    operation: Schema = {
        "summary": summary,
        "responses": {**ok, **{code: _error(_ERRORS[code]) for code in errors}},
    }
    if params:
        operation["parameters"] = params
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    return operation


def _certificate_paths(cert: Schema) -> Schema:
    """/api/v1/certificates (controller.api.certificates)."""
    upload: Schema = {
        "type": "object",
        "required": ["pem"],
        "additionalProperties": False,
        "properties": {
            "pem": {"type": "string", "description": "certificate, chain, unencrypted key (PEM)"}
        },
    }
    return {
        "/api/v1/certificates": {
            "get": _op(
                "every stored certificate (never its key)",
                {"200": _json({"type": "object", "required": ["certificates"]})},
                ("401", "421"),
            )
        },
        "/api/v1/certificates/{name}": {
            "get": _op(
                "one certificate; `served`: HAProxy serves this version",
                {"200": _json(CERTIFICATE)},
                _READ_ERRORS,
                [cert],
            ),
            "put": _op(
                "upload (replace) and serve it live, with no reload",
                {
                    "200": _json(CERTIFICATE, "replaced"),
                    "201": _json(CERTIFICATE, "created"),
                },
                _WRITE_ERRORS,
                [cert],
                upload,
            ),
            "delete": _op(
                "forget it (409 while a crt-list uses it)",
                {"200": _json({"type": "object"})},
                _WRITE_ERRORS,
                [cert],
            ),
        },
    }


@cache
def openapi_document(certificates: bool = False, fleet: bool = False) -> Schema:
    """The whole description; built once, it depends only on the code. `certificates`: with
    /api/v1/certificates, which an app serves once `add_certificate_routes` was called;
    `fleet`: with /api/v1/nodes, which a fleet node serves (docs/fleet.md)."""
    keys: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (model.Gateway, "validation"),
        (model.Gateway, "serialization"),
        (model.Route, "validation"),
        (RolloutSpec, "validation"),
    ]
    refs, defs = models_json_schema(
        keys, ref_template="#/components/schemas/{model}", schema_generator=_InputSchema
    )
    gateway_in, gateway_out, route_in, spec_in = (refs[key] for key in keys)
    name = input_format(model.Name)
    dry_run = _param("dry_run", "query", {"type": "boolean"})
    if_match = _param("If-Match", "header", {"type": "string"})
    gw = _param("gateway", "path", name)
    route = _param("route", "path", name)
    rollout = _param("rollout", "path", {"type": "string", "maxLength": 80})
    applied = {"200": _json(_ref("ApplyResult"), "applied (or dry run): how and the plan")}
    view = _json({"type": "object"}, "the rollout: phase, step, weights, checks, events")
    gateways = "/api/v1/gateways/{gateway}"
    paths: Schema = {
        "/healthz": {"get": _op("alive", {"200": _json({"type": "object"})}, ())},
        "/readyz": {
            "get": _op(
                "ready after the first sync",
                {"200": _json({"type": "object"}), "503": _json({"type": "object"}, "not ready")},
                (),
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics",
                {
                    "200": {
                        "description": "text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                ("401", "421"),
            )
        },
        "/api/v1/openapi.json": {
            "get": _op("this description", {"200": _json({"type": "object"})}, ("401", "421"))
        },
        "/api/v1/controller": {
            "get": _op(
                "readiness, reloads, drift repairs, what the desired state takes of the budget",
                {"200": _json({"type": "object"})},
                ("401", "421"),
            )
        },
        "/api/v1/gateways": {
            "get": _op(
                "all gateways; with `limit`, a page in name order and the name to go on after",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["gateways"],
                            "properties": {
                                "gateways": {"type": "object", "additionalProperties": gateway_out},
                                "next": {"anyOf": [name, {"type": "null"}]},
                            },
                        }
                    )
                },
                ("400", "401", "421"),
                [
                    _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000}),
                    _param("after", "query", name),
                ],
            )
        },
        gateways: {
            "get": _op("one gateway (ETag)", {"200": _json(gateway_out)}, _READ_ERRORS, [gw]),
            "put": _op(
                "create or replace",
                {**applied, "201": _json(_ref("ApplyResult"), "created")},
                _WRITE_ERRORS,
                [gw, dry_run, if_match],
                gateway_in,
            ),
            "delete": _op("remove", applied, _WRITE_ERRORS, [gw, dry_run, if_match]),
        },
        gateways + "/weights": {
            "patch": _op(
                "the whole new split; routes left out get 0 %",
                applied,
                _WRITE_ERRORS,
                [gw, dry_run, if_match],
                {
                    "type": "object",
                    "minProperties": 1,
                    "propertyNames": name,
                    "additionalProperties": input_format(model.Percent),
                },
            )
        },
        gateways + "/routes/{route}/instances": {
            "put": _op(
                "the route's instances",
                applied,
                _WRITE_ERRORS,
                [gw, route, dry_run, if_match],
                {
                    "type": "array",
                    "maxItems": 4096,
                    "items": input_format(model.Instance),
                },
            )
        },
        gateways + "/routes/{route}": {
            "patch": _op(
                "some fields of a route",
                applied,
                _WRITE_ERRORS,
                [gw, route, dry_run, if_match],
                {**route_in, "minProperties": 1},
            )
        },
        gateways + "/status": {
            "get": _op(
                "desired next to applied, per route",
                {"200": _json({"type": "object"})},
                _READ_ERRORS,
                [gw],
            )
        },
        "/api/v1/rollouts": {
            "get": _op(
                "all rollouts",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["rollouts"],
                            "properties": {
                                "rollouts": {"type": "array", "items": {"type": "object"}}
                            },
                        }
                    )
                },
                ("401", "421"),
                [
                    _param("gateway", "query", {"type": "string"}),
                    _param("active", "query", {"type": "boolean"}),
                ],
            ),
            "post": _op(
                "start one",
                {"201": view, "200": _json({"type": "object"}, "dry run")},
                _WRITE_ERRORS,
                [dry_run],
                spec_in,
            ),
        },
        "/api/v1/rollouts/{rollout}": {
            "get": _op("one rollout", {"200": view}, _READ_ERRORS, [rollout])
        },
        "/api/v1/rollouts/{rollout}/{action}": {
            "post": _op(
                "pause, resume, promote or abort",
                {"200": view},
                _WRITE_ERRORS,
                [
                    rollout,
                    _param("action", "path", {"enum": ["pause", "resume", "promote", "abort"]}),
                    dry_run,
                ],
            )
        },
    }
    if certificates:
        paths.update(_certificate_paths(_param("name", "path", name)))
    if fleet:
        paths["/api/v1/nodes"] = {
            "get": _op(
                "the fleet's nodes as this node sees them: applied revision, lag, live or "
                "down (writes take ?wait=applied[&timeout=S] on a fleet node)",
                {"200": _json({"type": "object", "required": ["node", "nodes"]})},
                ("401", "421"),
            )
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Weighbridge", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": {
                **defs.get("$defs", {}),
                "Error": ERROR_SCHEMA,
                "ApplyResult": APPLY_RESULT,
                "Change": CHANGE,
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
    }


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(CERTIFICATES in request.app, NODES in request.app))


def add_openapi_route(app: web.Application) -> None:
    app.router.add_get("/api/v1/openapi.json", get_openapi)
