"""Per-tenant request rate limits (see :mod:`kyc_host.ratelimit.limiter` for the design)."""
