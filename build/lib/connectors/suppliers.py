"""Per-supplier connector configuration: one YAML file, validated up front, errors with lines.

Secrets are never in the file: it names the environment variable that holds each one
(`{env: NAME}`); a `default` is accepted only in development, for the demo.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigurationError

SUPPLIER_ID = r"^[A-Za-z0-9._-]{1,64}$"
MAPPABLE = {"sku", "quantity", "sequence", "event_id", "observed_at", "kind", "price",
            "currency", "warehouse", "lead_time_days", "status"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(_Strict):
    """Where a secret comes from: an environment variable, by name."""

    env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    default: str | None = Field(default=None, repr=False,
                                description="development only (the demo)")

    def resolve(self, environ: Mapping[str, str], *, environment: str = "production") -> str:
        """The secret's value; outside development, only a real one from the environment.

        The file's `default` is public (it is in the repository), so outside development it
        is never used, and a variable set to it is refused as well.
        """
        value = environ.get(self.env)
        if value:
            if environment != "development" and value == self.default:
                raise ConfigurationError(
                    f"environment variable {self.env} holds the public demo value from the "
                    "suppliers file; set a real secret")
            return value
        if self.default is not None and environment == "development":
            return self.default
        hint = " (the file's default is used only with STOCKFLOW_ENVIRONMENT=development)" \
            if self.default is not None else ""
        raise ConfigurationError(f"environment variable {self.env} is not set{hint}")


class RateLimit(_Strict):
    per_second: float = Field(default=5.0, gt=0)
    burst: int = Field(default=5, ge=1)


class RetryPolicy(_Strict):
    base_s: float = Field(default=0.5, gt=0)
    cap_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)


class BreakerPolicy(_Strict):
    failure_threshold: int = Field(default=5, ge=1)
    reset_timeout_s: float = Field(default=30.0, gt=0)


class Schedule(_Strict):
    interval_s: float = Field(default=5.0, gt=0)


class UnitsConfig(_Strict):
    quantity_multiplier: int = Field(default=1, ge=1, description="e.g. 12 when counted in cases")
    price_divisor: int = Field(default=1, ge=1, description="e.g. 100 when prices are cents")
    timestamp: Literal["auto", "iso", "s", "ms", "us"] = "auto"
    default_currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    status_map: dict[str, Literal["ACTIVE", "DISCONTINUED"]] = Field(default_factory=dict)


class _SupplierBase(_Strict):
    id: str = Field(pattern=SUPPLIER_ID)
    enabled: bool = True
    mapping: dict[str, str | list[str]] = Field(
        description="canonical field -> the supplier's field name, or a list of aliases")
    units: UnitsConfig = UnitsConfig()
    schedule: Schedule = Schedule()
    rate_limit: RateLimit = RateLimit()
    retry: RetryPolicy = RetryPolicy()
    circuit_breaker: BreakerPolicy = BreakerPolicy()
    timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("mapping")
    @classmethod
    def _known_fields(cls, value: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        unknown = sorted(set(value) - MAPPABLE)
        if unknown:
            raise ValueError(f"unknown canonical fields {unknown}; known: {sorted(MAPPABLE)}")
        for required in ("sku", "quantity"):
            if required not in value:
                raise ValueError(f"mapping needs '{required}'")
        return value

    def aliases(self) -> dict[str, list[str]]:
        return {k: [v] if isinstance(v, str) else list(v) for k, v in self.mapping.items()}


class HttpCredentials(_Strict):
    bearer: SecretRef | None = None


class _HttpSupplier(_SupplierBase):
    endpoint: str = Field(pattern=r"^https?://")
    credentials: HttpCredentials = HttpCredentials()
    allow_plain_http: bool = Field(
        default=False, description="accept an http:// endpoint with credentials (logged)")
    max_response_bytes: int = Field(default=16 * 1024 * 1024, ge=1024,
                                    description="after decompression")

    @model_validator(mode="after")
    def _https_with_credentials(self) -> _HttpSupplier:
        # A bearer token over http:// is readable by anyone on the path.
        if urlsplit(self.endpoint).scheme != "https" and self.credentials.bearer is not None \
                and not self.allow_plain_http:
            raise ValueError("an endpoint with credentials must be https:// (set "
                             "allow_plain_http: true to send them in clear, e.g. to a local "
                             "simulator)")
        return self


class RestSupplier(_HttpSupplier):
    kind: Literal["rest"]
    cursor_param: str = "updated_since"
    cursor_format: Literal["ms", "iso"] = "ms"
    page_token_param: str = "page_token"
    limit_param: str = "limit"
    page_size: int = Field(default=100, ge=1, le=10_000)
    items_path: str = "items"
    next_page_path: str = "next_page_token"

    @model_validator(mode="after")
    def _needs_timestamp(self) -> RestSupplier:
        # The cursor advances on the supplier's update time; without it nothing is incremental.
        if "observed_at" not in self.mapping:
            raise ValueError("a rest feed needs mapping.observed_at (the updated_since field)")
        return self


class GraphqlSupplier(_HttpSupplier):
    kind: Literal["graphql"]
    query: str | None = None
    connection_path: str = "inventory"
    page_size: int = Field(default=100, ge=1, le=10_000)


class WebhookCredentials(_Strict):
    secret: SecretRef


class WebhookSupplier(_SupplierBase):
    kind: Literal["webhook"]
    credentials: WebhookCredentials
    events_path: str = "events"


class DropCredentials(_Strict):
    username: str
    password: SecretRef


class CsvSupplier(_SupplierBase):
    kind: Literal["ftp", "sftp", "local"]
    endpoint: str = Field(description="ftp://host:port/dir, sftp://host:port/dir or a local path")
    credentials: DropCredentials | None = None
    pattern: str = "*.csv"
    encoding: str = Field(default="utf-8-sig", description="one encoding, strict; utf-8-sig "
                                                           "strips a BOM")
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    stable_s: float = Field(default=2.0, ge=0)
    on_missing: Literal["zero", "ignore"] = "zero"
    max_missing_ratio: float = Field(default=0.05, gt=0, le=1)
    require_trailer: bool = False
    require_final_newline: bool = True
    max_file_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    tls: bool = Field(default=True, description="ftp: FTPS (explicit TLS); false = plain FTP")
    ca_file: Path | None = Field(default=None, description="ftp: CA bundle of the server's "
                                                           "certificate (default: system CAs)")
    known_hosts: Path | None = Field(default=None, description="sftp: default ~/.ssh/known_hosts")
    insecure_skip_host_key_check: bool = Field(
        default=False, description="sftp: accept any host key (logged at every connection)")

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        try:
            codecs.lookup(value)
        except LookupError as exc:
            raise ValueError(f"unknown encoding {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _endpoint_matches_kind(self) -> CsvSupplier:
        if self.kind != "local":
            scheme = urlsplit(self.endpoint).scheme
            if scheme != self.kind:
                raise ValueError(f"endpoint must be a {self.kind}:// URL, got {self.endpoint!r}")
            if self.credentials is None:
                raise ValueError(f"a {self.kind} feed needs credentials (username, password)")
        return self


SupplierConfig = Annotated[RestSupplier | GraphqlSupplier | WebhookSupplier | CsvSupplier,
                           Field(discriminator="kind")]


class WebhookReceiverConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8780, ge=0, le=65535)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_events: int = Field(default=1000, ge=1, le=100_000,
                            description="events per request; more is refused with 413")
    tolerance_s: int = Field(default=300, ge=1)


class SuppliersFile(_Strict):
    """The whole file. `simulator` is read by `stockflow simulate` and ignored here."""

    webhook_receiver: WebhookReceiverConfig = WebhookReceiverConfig()
    suppliers: list[SupplierConfig] = Field(min_length=1)
    simulator: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _unique_ids(self) -> SuppliersFile:
        seen: set[str] = set()
        for index, supplier in enumerate(self.suppliers):
            if supplier.id in seen:
                raise _DuplicateId(index, supplier.id)
            seen.add(supplier.id)
        return self

    def supplier(self, supplier_id: str) -> SupplierConfig:
        for s in self.suppliers:
            if s.id == supplier_id:
                return s
        raise ConfigurationError(
            f"no supplier {supplier_id!r}; known: {[s.id for s in self.suppliers]}")


class _DuplicateId(ValueError):
    def __init__(self, index: int, supplier_id: str) -> None:
        super().__init__(f"duplicate supplier id {supplier_id!r}")
        self.index = index


# --- YAML with line marks ------------------------------------------------------------------

def _marks(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = key.value
            out[(*path, name)] = key.start_mark.line + 1
            _marks(value, (*path, name), out)
            out[(*path, name)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _marks(item, (*path, index), out)


def load_yaml(text: str, source: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    """Parse YAML; return the data and the line of every mapping key / list item."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigurationError(f"{source}{line}: not valid YAML: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{source}: not valid YAML: {exc}") from exc
    marks: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _marks(node, (), marks)
    return data, marks


def line_of(loc: tuple[Any, ...], marks: Mapping[tuple[Any, ...], int]) -> tuple[int | None, str]:
    """The line and a readable path for a pydantic error location (tags are skipped)."""
    path: tuple[Any, ...] = ()
    for element in loc:
        if (*path, element) in marks:
            path = (*path, element)
    shown = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc
                    if not (isinstance(p, str) and p in ("rest", "graphql", "webhook", "ftp",
                                                         "sftp", "local", "function-after")))
    return marks.get(path), shown.lstrip(".")


def validation_message(exc: ValidationError, marks: Mapping[tuple[Any, ...], int],
                       source: str, prefix: tuple[Any, ...] = ()) -> str:
    lines = []
    for error in exc.errors():
        loc = (*prefix, *error["loc"])
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = (*loc, "kind")  # point at the kind line, not the list item
        line, shown = line_of(loc, marks)
        where = f"{source}:{line}" if line else source
        lines.append(f"{where}: {shown or '(top level)'}: {error['msg']}")
    return "\n".join(lines)


def parse_suppliers(text: str, source: str = "<suppliers.yaml>") -> SuppliersFile:
    """Validate a suppliers file; ConfigurationError names the file, line and field at fault."""
    data, marks = load_yaml(text, source)
    try:
        return SuppliersFile.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            cause = (error.get("ctx") or {}).get("error")
            if isinstance(cause, _DuplicateId):
                line = marks.get(("suppliers", cause.index, "id"))
                raise ConfigurationError(f"{source}:{line}: suppliers[{cause.index}].id: "
                                         f"{cause}") from exc
        raise ConfigurationError(validation_message(exc, marks, source)) from exc


def load_suppliers(path: Path) -> SuppliersFile:
    """Read and validate the suppliers YAML file at `path`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from exc
    return parse_suppliers(text, str(path))
