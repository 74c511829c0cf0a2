"""A short live demo on an embedded default: no services to start by hand."""
