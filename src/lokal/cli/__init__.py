"""The `lokal` command line."""
