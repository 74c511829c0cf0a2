"""The channels a failure can be routed to: the sinks that tell people."""

SENTRY = "sentry"
EMAIL = "email"
#: Every channel, in the order settings and messages list them.
CHANNELS = (SENTRY, EMAIL)
