"""Cluster definitions and the local stack (Ray head, tracking and storage servers) for this project."""
