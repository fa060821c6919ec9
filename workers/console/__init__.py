"""The operator console (``/console/`` on the admin listener): see ``app.py``."""

from workers.console.app import owns, register_console

__all__ = ["owns", "register_console"]
