"""Environment and secrets. Built once per process (ingress lifespan, deployment __init__)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WHISPERX_SERVE_", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Where uploads and the SQLite file live.")
    """Where uploads and the default SQLite database live."""

    database_url: str | None = None
    """SQLAlchemy URL; default ``sqlite:///<data_dir>/whisperx-serve.db``."""

    redis_url: str | None = None
    """Redis URL for cross-process progress events; unset means the Ray actor alone."""

    hf_token: SecretStr | None = None
    """Hugging Face token for gated hub models (production only; never needed offline)."""

    log_level: str = "INFO"

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'whisperx-serve.db').resolve()}"

    def upload_dir(self) -> Path:
        return (self.data_dir / "uploads").resolve()
