"""HTTP/WebSocket ingress: validation, task creation, progress streaming, error mapping."""
