"""BentoML services: thin wrappers over `hearth.serving` (one package so `bentos.x:Y` imports)."""
