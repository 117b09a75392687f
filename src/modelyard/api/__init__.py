"""HTTP interfaces: management API, OIP v2 REST, OpenAI API, metrics."""
