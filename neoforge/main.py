"""ASGI entry point: ``uvicorn neoforge.main:app``."""

from neoforge.api import create_app

app = create_app()
