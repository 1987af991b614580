"""The management API of the admin listener: tokens and scopes, tenants, audit, OpenAPI."""
