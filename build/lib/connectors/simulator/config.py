"""The simulator's configuration: the `simulator:` section of a suppliers YAML file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connectors.suppliers import SUPPLIER_ID, SecretRef, load_yaml, validation_message
from pipeline.errors import ConfigurationError

from .drops import CsvStyle
from .faults import FaultConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SimulatedSupplierConfig(_Strict):
    id: str = Field(pattern=SUPPLIER_ID)
    feed: Literal["rest", "graphql", "webhook", "ftp", "sftp"]
    skus: int = Field(default=200, ge=1, le=1_000_000)
    changes_per_second: float = Field(default=5.0, ge=0)
    faults: FaultConfig = FaultConfig()
    token: SecretRef | None = Field(default=None, description="rest/graphql bearer token")
    webhook_url: str | None = None
    secret: SecretRef | None = Field(default=None, description="webhook signing secret")
    password: SecretRef | None = Field(default=None, description="ftp/sftp password")
    drop_every_s: float = Field(default=15.0, gt=0)
    csv: CsvStyle = CsvStyle()


class SimulatorConfig(_Strict):
    host: str = "127.0.0.1"
    http_port: int = Field(default=8701, ge=0, le=65535)
    ftp_port: int = Field(default=8721, ge=0, le=65535)
    sftp_port: int = Field(default=8722, ge=0, le=65535)
    drop_dir: Path = Path(".stockflow/simulator/drops")
    seed: int = 42
    suppliers: list[SimulatedSupplierConfig] = Field(default_factory=list)


def load_simulator_config(path: Path) -> SimulatorConfig:
    """Read the `simulator:` section of `path`; errors name the line at fault."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from exc
    data, marks = load_yaml(text, str(path))
    section = data.get("simulator") if isinstance(data, dict) else None
    if section is None:
        raise ConfigurationError(f"{path}: no `simulator:` section")
    try:
        return SimulatorConfig.model_validate(section)
    except ValidationError as exc:
        raise ConfigurationError(validation_message(exc, marks, str(path),
                                                    prefix=("simulator",))) from exc
