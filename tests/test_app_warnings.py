"""Building the app raises no Litestar deprecation warning (inferred parameters, untyped
request bodies, Parameter(query=...), Body() defaults): they stop working in Litestar 3."""

from __future__ import annotations

import warnings

from mldropd.app import create_app
from mldropd.settings import Settings


def _from_litestar(w: warnings.WarningMessage) -> bool:
    return issubclass(w.category, DeprecationWarning) and (
        "litestar" in str(w.message).lower() or "litestar" in w.filename.lower()
    )


def test_building_the_app_raises_no_litestar_deprecation_warning(settings: Settings) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        app = create_app(settings)
    assert app.route_handler_method_map  # the handlers were registered (and their kwargs parsed)
    found = sorted({f"{w.filename}:{w.lineno}: {w.message}" for w in caught if _from_litestar(w)})
    assert not found, "Litestar deprecation warnings:\n" + "\n".join(found)
