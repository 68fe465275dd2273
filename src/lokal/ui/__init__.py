"""The web UI served by ``lokal serve`` at ``/``: static files plus a small ``/ui/api``."""
