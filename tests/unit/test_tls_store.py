"""The certificate store: private files, atomic and symlink-proof writes, checked names."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from controller.errors import InvalidInput, NotFound
from controller.tls.metrics import EXPIRY, register_certificate_metrics
from controller.tls.pem import parse_bundle
from controller.tls.store import CertificateStore
from tests.support.certs import Authority


@pytest.fixture(scope="module")
def ca() -> Authority:
    return Authority()


def test_files_are_private_and_survive_a_restart(tmp_path: Path, ca: Authority) -> None:
    os.umask(0o022)
    store = CertificateStore.in_state_dir(tmp_path)
    bundle = parse_bundle(ca.issue("shop.example").pem)
    assert store.put("shop", bundle) is None
    path = tmp_path / "certs" / "shop.pem"
    assert store.path("shop") == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text() == bundle.pem
    again = CertificateStore.in_state_dir(tmp_path)
    assert again.names() == ["shop"] and again.info("shop") == bundle.info
    assert again.read("shop").pem == bundle.pem


def test_put_returns_the_previous_text_and_restore_puts_it_back(
    tmp_path: Path, ca: Authority
) -> None:
    store = CertificateStore(tmp_path / "certs")
    old, new = (parse_bundle(ca.issue("a.example").pem) for _ in range(2))
    store.put("a", old)
    previous = store.put("a", new)
    assert previous == old.pem and store.info("a") == new.info
    store.restore("a", previous)
    assert store.read("a").pem == old.pem and store.info("a") == old.info
    store.put("b", new)
    store.restore("b", None)
    assert store.names() == ["a"] and not (tmp_path / "certs" / "b.pem").exists()


def test_a_symlink_is_replaced_never_written_through(tmp_path: Path, ca: Authority) -> None:
    store = CertificateStore(tmp_path / "certs")
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (tmp_path / "certs" / "x.pem").symlink_to(victim)
    with pytest.raises(OSError):
        store.read("x")
    store.put("x", parse_bundle(ca.issue("x.example").pem))
    assert victim.read_text() == "untouched"
    assert not (tmp_path / "certs" / "x.pem").is_symlink()


@pytest.mark.parametrize("name", ["", "UPPER", "a/b", "../x", "a.pem", "x\n", "-a", "a" * 64])
def test_names_are_checked_whole(tmp_path: Path, name: str) -> None:
    store = CertificateStore(tmp_path / "certs")
    with pytest.raises(InvalidInput) as info:
        store.path(name)
    assert info.value.problems[0]["field"] == "name"


def test_unknown_and_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir(mode=0o700)
    (tmp_path / "certs" / "broken.pem").write_text("not a certificate")
    store = CertificateStore(tmp_path / "certs")
    assert store.names() == []  # ignored, with a warning in the log
    with pytest.raises(NotFound):
        store.info("nope")
    with pytest.raises(NotFound):
        store.read("nope")
    assert store.delete("nope") is False


def test_a_directory_open_to_others_is_refused(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir(mode=0o755)
    os.chmod(tmp_path / "certs", 0o755)
    with pytest.raises(InvalidInput):
        CertificateStore(tmp_path / "certs")


def test_expiry_gauge_follows_the_store(tmp_path: Path, ca: Authority) -> None:
    store = CertificateStore(tmp_path / "certs")
    registry = CollectorRegistry()
    register_certificate_metrics(registry, store)
    assert registry.get_sample_value(EXPIRY, {"certificate": "a"}) is None
    leaf = ca.issue("a.example", days=12)
    store.put("a", parse_bundle(leaf.pem))
    expected = leaf.cert.not_valid_after_utc.timestamp()
    assert registry.get_sample_value(EXPIRY, {"certificate": "a"}) == expected
    store.delete("a")
    assert registry.get_sample_value(EXPIRY, {"certificate": "a"}) is None
