"""HTTP layer: one router per dialect, auth, error mapping. Never imports torch."""

from darkroom.api.app import create_app

__all__ = ["create_app"]
