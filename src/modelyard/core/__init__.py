"""The core: tenants and keys, registry, inference data plane. Plain Python; no HTTP in here."""
