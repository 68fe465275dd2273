"""Production concerns around the API routes: API keys, rate and size limits, the audit log.

``install(app, settings, runtime, sinks)`` adds them to an app; middlewares run, outermost first:
CORS → tracking (facts of the request for metrics and audit) → body limit → auth → rate limit.
"""

from __future__ import annotations

from fastapi import FastAPI

from lokal.config import Settings
from lokal.runtime.runtime import Runtime
from lokal.server.security.audit import AuditLog
from lokal.server.security.auth import AuthMiddleware
from lokal.server.security.keys import KeyStore
from lokal.server.security.limits import BodyLimitMiddleware, RateLimiter, RateLimitMiddleware, install_cors
from lokal.server.security.tracking import Sink, TrackingMiddleware, attach_generation


def install(app: FastAPI, settings: Settings, runtime: Runtime, sinks: list[Sink]) -> None:
    """Add keys, limits and the audit log to app (call after its other middlewares); ``sinks`` get
    the facts of every HTTP request as it ends (the metrics')."""
    keys = KeyStore(settings.home)
    limiter = RateLimiter(settings.rate_rpm, settings.rate_tpm)
    sinks = list(sinks)
    for subscriber in (limiter.charge_generation, attach_generation):
        runtime.subscribe(subscriber)
    if settings.audit_log:
        audit = AuditLog(settings.home / "logs" / "audit.log", settings.audit_max_bytes, settings.audit_backups,
                         with_prompts=settings.audit_prompts)
        sinks.append(audit.record)
        app.state.audit = audit
    app.state.keys = keys
    app.state.rate_limiter = limiter
    app.add_middleware(RateLimitMiddleware, limiter=limiter, keys=keys)
    app.add_middleware(AuthMiddleware, keys=keys)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(TrackingMiddleware, sinks=sinks, api=app, capture_prompts=settings.audit_prompts)
    install_cors(app, settings.origins)
