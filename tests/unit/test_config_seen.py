"""A config file the last start validated is not parsed again at the next one (issue 11:
adopting 1,000 gateways in seconds), unless anything that decides its meaning changed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from controller.config_file import ConfigSeen, read_seen, write_seen
from controller.service import RunSettings, config_seen, state_paths


@pytest.fixture
def settings(tmp_path: Path) -> RunSettings:
    config = tmp_path / "weighbridge.yaml"
    config.write_text("gateways:\n  shop: {bind: '127.0.0.1:8080', routes: {a: {}}}\n")
    state = tmp_path / "state"
    (state / "gateways").mkdir(parents=True)
    (state / "gateways" / "shop.json").write_text("{}")
    return RunSettings(config, state, "127.0.0.1", 1)


def remembered(settings: RunSettings, revision: int = 4) -> ConfigSeen:
    digest, seen = config_seen(settings, state_paths(settings))
    assert digest is not None and seen is None  # nothing remembered yet: parse it
    write_seen(settings.state_dir, ConfigSeen(digest, revision))
    return ConfigSeen(digest, revision)


def test_the_same_file_with_a_stored_state_is_not_parsed_again(settings: RunSettings) -> None:
    seen = remembered(settings)
    assert read_seen(settings.state_dir) == seen
    assert config_seen(settings, state_paths(settings)) == (seen.digest, seen)


def test_another_file_or_policy_or_an_empty_store_is_parsed(settings: RunSettings) -> None:
    remembered(settings)
    paths = state_paths(settings)
    for other in (
        replace(settings, allow_unsafe_acls=True),  # the same bytes may now be refused
        replace(settings, config_wins=True),  # the file is to be applied
        replace(settings, reseed=True),
    ):
        assert config_seen(other, paths)[1] is None
    settings.config_file.write_text(settings.config_file.read_text() + "# edited\n")
    assert config_seen(settings, paths)[1] is None
    remembered(settings)
    (settings.state_dir / "gateways" / "shop.json").unlink()  # an empty store is seeded
    assert config_seen(settings, paths)[1] is None


def test_a_missing_or_unreadable_memo_means_parse(settings: RunSettings) -> None:
    paths = state_paths(settings)
    (settings.state_dir / "config-file.seen").write_text("not a digest\n")
    assert config_seen(settings, paths)[1] is None
    settings.config_file.unlink()
    assert config_seen(settings, paths) == (None, None)
