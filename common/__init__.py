"""Contracts shared by the ingress, the deployments and storage: schemas, errors, settings."""
