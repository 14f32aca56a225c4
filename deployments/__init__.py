"""Ray Serve deployments: one model stage per module (plain engine + thin deployment)."""
