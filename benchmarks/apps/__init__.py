"""One Celery app module per benchmark variant; workers load them with ``celery -A``."""
