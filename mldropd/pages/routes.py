"""HTML pages: sign-in, deploy, my models, model detail, dashboard. Each has a JSON twin in the
API (/api/v1); HTMX requests get the page's partial from the same handler."""

from __future__ import annotations

from mldropd.pages import auth, dashboard, deploy, models
from mldropd.pages.auth import session_user

ROUTES = [*auth.ROUTES, *deploy.ROUTES, *models.ROUTES, *dashboard.ROUTES]

__all__ = ["ROUTES", "session_user"]
