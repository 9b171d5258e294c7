"""Stage 4: the JSON API (app factory, routes, metrics, the serving drift window) and its server (granian)."""
