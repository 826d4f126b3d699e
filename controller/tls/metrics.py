"""Expiry of every stored certificate, as a Prometheus gauge.

`weighbridge_certificate_expiry_timestamp_seconds{certificate}`: the leaf's notAfter in
Unix seconds, read from the store's in-memory descriptions at each scrape, so a series
appears with an upload and goes with a delete. Alerts compare it with `time()`
(deploy/prometheus-rules.yml).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.tls.store import CertificateStore

EXPIRY = "weighbridge_certificate_expiry_timestamp_seconds"


class CertificateExpiry(Collector):
    """A registry collector over a `CertificateStore`."""

    def __init__(self, store: CertificateStore) -> None:
        self.store = store

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            EXPIRY,
            "When the certificate stops being valid (its notAfter), in Unix seconds.",
            labels=["certificate"],
        )

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        for name, info in sorted(self.store.infos().items()):
            family.add_metric([name], info.not_after.timestamp())
        return [family]


def register_certificate_metrics(
    registry: CollectorRegistry, store: CertificateStore
) -> CertificateExpiry:
    """Add the expiry gauge to the controller's registry (the one `Metrics.render` reads)."""
    collector = CertificateExpiry(store)
    registry.register(collector)
    return collector
