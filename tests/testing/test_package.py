"""``asgi_attribution.testing`` and the pytest plugin load lazily: capturing events costs neither
the fake provider, nor argparse, nor uvicorn."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import asgi_attribution.testing as testing

HEAVY = (
    "argparse",
    "uvicorn",
    "asgi_attribution.testing.fake_provider",
    "asgi_attribution.testing._server",
    "asgi_attribution._cli",
)


def loaded_after(statement: str) -> list[str]:
    """The HEAVY modules a fresh interpreter has loaded after running ``statement``."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return [name for name in json.loads(result.stdout) if name in HEAVY]


@pytest.mark.parametrize(
    "statement",
    [
        "import asgi_attribution",
        "import asgi_attribution.testing",
        "from asgi_attribution.testing import CapturedEvents, MemoryTransport, capture_events",
    ],
)
def test_importing_loads_none_of_the_heavy_parts(statement: str) -> None:
    assert loaded_after(statement) == []


def test_the_pytest_plugin_imports_only_the_capture() -> None:
    # pytest itself imports argparse; the plugin must add none of the others.
    loaded = loaded_after("import asgi_attribution.pytest_plugin")
    assert [name for name in loaded if name != "argparse"] == []


def test_the_fake_provider_loads_on_first_use() -> None:
    assert loaded_after("from asgi_attribution.testing import FakeProvider") == [
        "asgi_attribution.testing.fake_provider"
    ]
    # uvicorn itself only when a server starts.
    assert loaded_after("from asgi_attribution.testing import serve_in_thread") == [
        "asgi_attribution.testing._server"
    ]


def test_every_public_name_resolves_to_its_home() -> None:
    from asgi_attribution.testing._server import serve_in_thread
    from asgi_attribution.testing.fake_provider import FakeProvider, Faults, Received

    assert testing.FakeProvider is FakeProvider
    assert testing.Faults is Faults
    assert testing.Received is Received
    assert testing.serve_in_thread is serve_in_thread
    assert sorted(testing.__all__) == sorted(
        name for name in dir(testing) if name in testing.__all__
    )
    assert set(testing.__all__) <= set(dir(testing))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'FakeProviders'"):
        _ = testing.FakeProviders  # type: ignore[attr-defined]
