"""HTTP layer: the base handler (tenant resolution, JSON errors, CORS) and route assembly."""
