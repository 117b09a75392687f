"""Open Inference Protocol v2 over REST: the wire codec (``codec``) and its routes."""
