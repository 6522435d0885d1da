"""Test harness: start and stop the real peers (drayage, Swift, docker-registry, clients)."""
