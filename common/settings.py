"""Environment and secrets. Built once per process (ingress lifespan, deployment __init__)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, IPvAnyNetwork, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WHISPERX_SERVE_", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Where uploads and the SQLite file live.")
    """Where uploads and the default SQLite database live."""

    database_url: str | None = None
    """SQLAlchemy URL; default ``sqlite:///<data_dir>/whisperx-serve.db``."""

    blob_store: Literal["local", "database"] = "local"
    """Where uploaded and downloaded audio is kept: ``local``, a directory (``blob_dir``),
    for one node; ``database``, the task database itself (chunked), which every node of a
    cluster reaches. Several nodes on a node-local directory refuse to start."""

    blob_dir: Path | None = None
    """The ``local`` store's directory; default ``<data_dir>/uploads``."""

    blob_dir_shared: bool = False
    """Operator's word that ``blob_dir`` is a volume every node mounts (NFS, a shared
    disk), so the ``local`` store may serve a cluster of several nodes."""

    redis_url: str | None = None
    """Redis URL for cross-process progress events; unset means the Ray actor alone."""

    redis_prefix: str = "whisperx"
    """First part of every Redis key and channel (``{prefix}:{app}:...``)."""

    redis_stream_maxlen: int = Field(1000, ge=10)
    """About how many events each task's Redis stream keeps (older ones are trimmed)."""

    redis_ttl_seconds: int = Field(86_400, ge=60)
    """A task's Redis stream expires this long after its last event."""

    hf_token: SecretStr | None = None
    """Hugging Face token for gated hub models (production only; never needed offline)."""

    log_level: str = "INFO"

    callback_signing_secret: SecretStr | None = None
    """Signs the callbacks of tasks that no API key owns (submitted while auth was off, or
    through a DeploymentHandle); a key's tasks are signed with that key's own secret."""

    url_fetch_allow_networks: Annotated[list[IPvAnyNetwork], NoDecode] = []
    """CIDRs that URL downloads and task callbacks may reach although they are not public
    (an internal media server; a test server on 127.0.0.1). A JSON list or comma-separated
    (``127.0.0.1/32,10.2.0.0/16``); default none. Metadata, multicast and unspecified
    addresses stay refused."""

    @field_validator("url_fetch_allow_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'whisperx-serve.db').resolve()}"

    def upload_dir(self) -> Path:
        """The ``local`` blob store's directory."""
        return (self.blob_dir or self.data_dir / "uploads").resolve()

    def spool_dir(self) -> Path:
        """This node's scratch space: an upload is probed here before it is stored, and a
        stored file is copied here to be decoded."""
        return (self.data_dir / "spool").resolve()
