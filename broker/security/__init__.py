"""Security of the broker's transport and clients: listeners, TLS, principals."""
