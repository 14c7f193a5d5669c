"""darkroom: self-hosted image generation behind the hosted FLUX request-queue API."""

__version__ = "0.1.0"
