"""A small Python client of the ocrq HTTP API."""

from client.client import ClientError, OcrqClient

__all__ = ["ClientError", "OcrqClient"]
