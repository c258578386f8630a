"""Evaluation against labels: image and pixel metrics, exact and chunked."""
