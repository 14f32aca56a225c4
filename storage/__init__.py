"""SQL persistence of tasks: the only package that imports SQLAlchemy."""

from storage.db import Database, migrate
from storage.models import TaskRow

__all__ = ["Database", "TaskRow", "migrate"]
