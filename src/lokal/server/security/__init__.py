"""Production concerns around the API routes: API keys, limits, metrics, audit log, readiness.

``install(app, settings, runtime)`` adds them to an app; middlewares run, outermost first:
CORS → tracking (facts of the request for metrics and audit) → body limit → auth → rate limit.
"""

from __future__ import annotations

from fastapi import FastAPI

from lokal.config import Settings
from lokal.runtime.runtime import Runtime
from lokal.server.security.audit import AuditLog
from lokal.server.security.auth import AuthMiddleware
from lokal.server.security.keys import KeyStore
from lokal.server.security.lifecycle import router as lifecycle_router
from lokal.server.security.limits import BodyLimitMiddleware, RateLimiter, RateLimitMiddleware, install_cors
from lokal.server.security.metrics import Metrics
from lokal.server.security.metrics import router as metrics_router
from lokal.server.security.tracking import RequestLimits, Sink, TrackingMiddleware


def install(app: FastAPI, settings: Settings, runtime: Runtime) -> None:
    """Add keys, limits, metrics, the audit log and ``/ready`` to app (call after its other middlewares)."""
    keys = KeyStore(settings.home)
    limiter = RateLimiter(settings.rate_rpm, settings.rate_tpm)
    metrics = Metrics(runtime)
    sinks: list[Sink] = [metrics.observe, limiter.charge_facts]
    if settings.audit_log:
        audit = AuditLog(settings.home / "logs" / "audit.log", settings.audit_max_bytes, settings.audit_backups,
                         with_prompts=settings.audit_prompts)
        sinks.append(audit.record)
        app.state.audit = audit
    app.state.keys = keys
    app.state.metrics = metrics
    app.state.rate_limiter = limiter
    app.include_router(metrics_router)
    app.include_router(lifecycle_router)
    limits = RequestLimits(settings.max_tokens_limit, settings.max_prompt_tokens, settings.request_timeout)
    app.add_middleware(RateLimitMiddleware, limiter=limiter, keys=keys)
    app.add_middleware(AuthMiddleware, keys=keys)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(TrackingMiddleware, sinks=sinks, limits=limits, api=app,
                       capture_prompts=settings.audit_prompts)
    install_cors(app, settings.origins)
