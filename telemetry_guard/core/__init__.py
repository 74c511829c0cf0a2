"""The failure pipeline, pure: no Celery, no Redis."""
