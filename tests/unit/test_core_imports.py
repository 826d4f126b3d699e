"""The pure core (model → compile → plan) loads no I/O module: checked in a fresh interpreter,
since this test process has long imported everything."""

from __future__ import annotations

import json
import subprocess
import sys

PURE = [
    "controller.model",
    "controller.compile",
    "controller.render",
    "controller.plan",
    "controller.reweigh",
]
SHELL = [
    "asyncio",
    "aiohttp",
    "controller.runtime.client",
    "controller.runtime.master",
    "controller.process",
    "controller.store",
    "controller.files",
]


def loaded_after_import(module: str) -> set[str]:
    code = f"import sys, json, {module}; print(json.dumps(sorted(sys.modules)))"
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(output))


def test_the_pure_core_imports_no_io_module() -> None:
    for module in PURE:
        loaded = loaded_after_import(module)
        assert module in loaded
        assert not loaded & set(SHELL), f"{module} pulls in {sorted(loaded & set(SHELL))}"


def test_the_run_command_loads_nothing_it_needs_only_after_ready() -> None:
    """What `weighbridge run` imports before it answers ready (issue 11: an adopt in ≤ 3 s):
    no test library, and the DNS resolver only once the API is up."""
    loaded = loaded_after_import("controller.cli, controller.service")
    assert "controller.service" in loaded
    assert not {"hypothesis", "pytest", "dns"} & loaded, sorted(
        {"hypothesis", "pytest", "dns"} & loaded
    )
