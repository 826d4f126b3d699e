"""Certificate endpoints under /api/v1/certificates: upload, list, show, delete.

`PUT /api/v1/certificates/{name}` takes JSON `{"pem": "<certificate, chain, private key>"}`
(the text of HAProxy's PEM file). JSON, not `application/x-pem-file`: every write of this
API is `application/json`, which a web page cannot send cross-origin without a CORS
preflight (controller.api.security), and one format keeps the rule one line. Answers
describe the certificate (subject, SANs, issuer, dates, fingerprint) and never carry the
key. A refused upload (400 naming `pem`) leaves the stored file and what HAProxy serves
unchanged.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from controller.api.body import read_json_body
from controller.errors import InvalidInput
from controller.tls.manager import CertificateManager
from controller.tls.pem import parse_bundle
from controller.tls.store import check_certificate_name

CERTIFICATES = web.AppKey("certificates", CertificateManager)
PATH = "/api/v1/certificates"


def _name(request: web.Request) -> str:
    return check_certificate_name(request.match_info["name"])


def _described(name: str, info: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, **info, **extra}


def _pem_field(body: Any) -> str:
    if not isinstance(body, dict) or "pem" not in body:
        raise InvalidInput.for_field("pem", 'required: send {"pem": "<PEM text>"}')
    unknown = sorted(set(body) - {"pem"})
    if unknown:
        raise InvalidInput.for_field(unknown[0], "unknown field (only pem is accepted)")
    pem: Any = body["pem"]
    if not isinstance(pem, str):
        raise InvalidInput.for_field("pem", "must be a string of PEM text")
    return pem


async def put_certificate(request: web.Request) -> web.Response:
    name = _name(request)
    pem = _pem_field(await read_json_body(request))
    # RSA key checks take milliseconds: off the event loop.
    bundle = await asyncio.to_thread(parse_bundle, pem)
    # Shielded: a client that hangs up must not leave the store and HAProxy half-changed.
    installed = await asyncio.shield(request.app[CERTIFICATES].install(name, bundle))
    body = _described(name, installed.info.as_json(), live=installed.live)
    return web.json_response(body, status=201 if installed.created else 200)


async def list_certificates(request: web.Request) -> web.Response:
    infos = request.app[CERTIFICATES].store.infos()
    return web.json_response(
        {"certificates": {name: info.as_json() for name, info in sorted(infos.items())}}
    )


async def get_certificate(request: web.Request) -> web.Response:
    name = _name(request)
    manager = request.app[CERTIFICATES]
    info = manager.store.info(name)
    served = await manager.served(name)
    live = None if served is None else served.sha1_fingerprint == info.sha1_fingerprint
    return web.json_response(_described(name, info.as_json(), served=live))


async def delete_certificate(request: web.Request) -> web.Response:
    name = _name(request)
    await asyncio.shield(request.app[CERTIFICATES].remove(name))
    return web.json_response({"name": name, "deleted": True})


def add_certificate_routes(app: web.Application, manager: CertificateManager) -> None:
    """Register the endpoints on the API app (its middlewares: access, errors, metrics)."""
    app[CERTIFICATES] = manager
    app.router.add_get(PATH, list_certificates)
    app.router.add_get(PATH + "/{name}", get_certificate)
    app.router.add_put(PATH + "/{name}", put_certificate)
    app.router.add_delete(PATH + "/{name}", delete_certificate)
