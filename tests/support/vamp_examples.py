"""Vamp's documented gateway examples, quoted from magneticio/vamp.io
(content/documentation/using-vamp/gateways.md, gateways-and-conditions.md,
sticky-sessions.md and the canary-release tutorial), for the import tests.

Some examples in the docs are only a gateway's `routes`: `as_gateway` puts them in one.
Tests replace the port numbers (and external addresses) with free loopback ones.
"""

from __future__ import annotations

SPLIT = """
name: sava
port: 9070/http
routes:
  sava:1.0/sava/port:
    weight: 90%          # condition can be used as well
  sava:1.1/sava/port:
    weight: 10%
"""
"""gateways.md: 'Gateway (90% / 10%)'."""

FIREFOX_ONLY = """
service_A:
  weight: 100%
service_B:
  weight: 0%
  condition_strength: 100%
  condition: user-agent == Firefox
"""
"""gateways.md: 'Route all Firefox and only Firefox users to route service_B' (routes only)."""

HALF_FIREFOX = """
service_A:
  weight: 80%
service_B:
  weight: 20%
  condition_strength: 50%
  condition: user-agent == Firefox
"""
"""gateways.md: 'Route half of Firefox users to service_B, other half to service_A (80%) or
service_B (20%)' (routes only)."""

TUTORIAL = """
name: sava/sava/webport
port: 9050/http
routes:
  sava/sava/sava:1.0.0/webport:
    weight: 100%
  sava/sava/sava:1.1.0/webport:
    weight: 0%
    condition: {CONDITION}
    condition_strength: 100%
"""
"""The canary tutorial's gateway after its steps (condition, strength 100 %, weight 0 %)."""

EXTERNAL = """
name: mesos
port: 8080/http
sticky: route

routes:
  "[192.168.99.100:5050]":
    weight: 50%
  "[localhost:5050]":
    weight: 50%
"""
"""gateways.md: 'Vamp managed and external routes'."""

STICKY_BLUEPRINT = """
name: sava:1.0
gateways:
  9050/http:
    sticky: service
    routes:           # let's say we have 2 clusters: sava1 (90%) and sava2 (10%)
      sava1/port:
        weight: 90%
      sava2/port:
        weight: 10%
"""
"""sticky-sessions.md: 'Sticky sessions can be also used for gateways' (clusters left out)."""


def as_gateway(name: str, port: str, routes: str) -> str:
    """A routes-only example of the docs inside the gateway it belongs to."""
    indented = "".join(f"  {line}\n" for line in routes.strip().splitlines())
    return f"name: {name}\nport: {port}\nroutes:\n{indented}"
