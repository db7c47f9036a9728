"""One settings object for every component.

Environment variables keep the names and meanings of the original single-server tool
(``LLM_*``); nothing else in llmi reads ``os.environ`` for configuration.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


class Settings(BaseSettings):
    """Configuration from ``LLM_*`` environment variables (and a ``.env`` file if present)."""

    model_config = SettingsConfigDict(env_prefix="LLM_", env_file=".env", extra="ignore")

    models_dir: Path = Field(Path("models"), description="Folder holding one sub-folder per model.")
    host: str = Field("0.0.0.0", description="Address the server listens on.")
    port: int = Field(15530, ge=0, le=65535, description="Port the server listens on.")
    log_level: str = Field("INFO", description="Python logging level name.")
    state_dir: Path | None = Field(
        None,
        description="Folder for what llmi remembers across restarts (measured memory); default ~/.cache/llmi.",
    )

    # GPU budget (kept from the original tool).
    gpu_memory_utilization: float = Field(
        0.8, gt=0, le=1, description="Fraction of the GPU memory budget llmi may plan with."
    )
    available_gpu_memory_gb: float = Field(8.0, gt=0, description="GPU memory budget in GB (GiB).")
    enable_gpu_memory_offload: bool = Field(
        True, description="Place models above the offload threshold on GPU+CPU instead of GPU only."
    )
    gpu_memory_offload_threshold_gb: float = Field(
        4.0, gt=0, description="Models whose estimate exceeds this many GB are offloaded."
    )
    cuda_visible_devices: str | None = Field(None, description="Passed to runtimes as CUDA_VISIBLE_DEVICES.")
    # New in llmi: without a GPU, models are planned against host memory instead.
    cpu_memory_budget_gb: float | None = Field(
        None, gt=0, description="Host memory budget in GiB when there is no GPU (default: half of host memory)."
    )

    # vLLM settings (kept from the original tool; used by the vLLM engine).
    vllm_tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor parallel size.")
    vllm_dtype: str = Field("auto", description="vLLM dtype.")
    vllm_max_model_len: int = Field(16384, ge=16, description="Context length for chat models (tokens).")
    vllm_command: str | None = Field(
        None,
        description="How to run vLLM, e.g. '/opt/vllm/bin/vllm' (default: the vllm script of an installed "
        "vLLM). Chat models run on vLLM's own server when a GPU is present and vLLM can be run.",
    )

    # Model management (kept from the original tool).
    auto_unload_models: bool = Field(True, description="Unload idle models after their idle timeout.")
    model_cache_size: int = Field(1, ge=1, description="Loaded models kept per model type.")

    # Access control: off until keys are set (anyone who reaches the port may otherwise use every model).
    api_keys: str | None = Field(
        None, repr=False, description="Comma-separated API keys; with any set, every /v1 route needs one (401)."
    )
    api_keys_file: Path | None = Field(None, description="A file of API keys, one per line (a mounted Secret).")
    metrics_open: bool = Field(True, description="Serve /metrics without a key (for Prometheus) when keys are on.")

    # Request limits: why they exist is that a local server must survive hostile input.
    max_request_bytes: int = Field(
        64 * MIB, ge=1024, description="Largest request body accepted (bytes); larger gets 413."
    )
    max_image_bytes: int = Field(20 * MIB, ge=1, description="Largest decoded image file (bytes).")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Largest image (width x height); larger ones are refused as bombs."
    )
    max_request_pixels: int = Field(
        120_000_000, ge=1, description="Most pixels all images of one request may decode to together."
    )
    max_images_per_request: int = Field(64, ge=1, description="Most images in one request.")
    max_batch_inputs: int = Field(2048, ge=1, description="Most inputs/documents/texts in one request.")
    max_input_chars: int = Field(
        1_000_000,
        ge=1,
        description="Longest text (characters) before tokenization: each embedding input, document, query, "
        "completion prompt, and a chat's messages together.",
    )
    max_prompts: int = Field(64, ge=1, description="Most prompts in one /v1/completions request (each is generated).")
    max_stop_strings: int = Field(
        16, ge=1, description="Most stop strings per request: each is looked for after every token."
    )
    max_stop_chars: int = Field(1000, ge=1, description="Longest stop string (characters).")
    max_logit_bias: int = Field(1024, ge=1, description="Most logit_bias entries per request.")
    max_instruction_chars: int = Field(
        4096,
        ge=1,
        description="Longest rerank instruction (characters): it is repeated in front of every document.",
    )
    max_tokens_default: int | None = Field(
        None,
        ge=1,
        description="Tokens generated when a chat request names no max_tokens (default: the rest of the context, "
        "as OpenAI does). Capped by LLM_MAX_TOKENS_LIMIT.",
    )
    max_tokens_limit: int | None = Field(
        None,
        ge=1,
        description="Hard ceiling on max_tokens (tokens): a request above it is a 400, so one client cannot hold "
        "the model for the whole context. Default: none beyond the context length.",
    )
    max_requests_per_model: int = Field(
        256,
        ge=1,
        description="Requests one runtime accepts at once (running or queued on its model); more get 429 with "
        "Retry-After, so a burst cannot queue without bound.",
    )
    max_concurrent_sequences: int = Field(
        64, ge=1, description="Chat generations batched at once in one runtime; more wait in line."
    )
    batch_wait_ms: float = Field(
        2.0,
        ge=0,
        description="How long (milliseconds) an encoder request waits for others to share its batch when the "
        "model is idle; 0 batches only what arrives while the model is busy.",
    )
    cpu_packed_weights: bool = Field(
        True,
        description="Pack a float32 CPU model's linear weights for oneDNN once it is ready (one layer at a "
        "time between requests): 1.2-2x faster matmuls; off keeps plain nn.Linear.",
    )
    max_batch_items: int = Field(
        256,
        ge=1,
        description="Most texts/images of concurrent encoder requests merged into one batch (a batch holds at "
        "most one forward's worth of the engine: 32 texts, 16 pairs or images).",
    )

    # Embedded control plane (llmi serve).
    queue_timeout_s: float = Field(
        300.0, gt=0, description="How long a request may wait for its model to load before 503 + Retry-After."
    )
    max_queue_per_model: int = Field(256, ge=1, description="Requests waiting per model before 429.")
    max_concurrent_per_model: int = Field(
        64, ge=1, description="Requests in flight to one model at once; more wait in its queue."
    )
    swap_fairness_s: float = Field(
        10.0,
        ge=0,
        description="A loaded model with queued work is kept (fewer swaps) until another model's request "
        "has waited this long (s); then it drains and makes room.",
    )
    swap_linger_ms: float = Field(
        20.0,
        ge=0,
        description="A loaded model that served several requests and just went idle keeps its room this long "
        "(ms) before another model's request takes it: the clients it answered are often sending their next "
        "request already. A model that served one request makes room at once.",
    )
    max_load_failures: int = Field(5, ge=1, description="Quick crashes in a row before a model is marked failed.")
    load_retry_s: float = Field(
        30.0, gt=0, description="Wait after a failed load before the next try (s); doubles per failure, max 600."
    )
    host_memory_budget_gb: float | None = Field(
        None, gt=0, description="Host memory parked models may hold (GiB; default: half of host memory)."
    )
    park_models: bool = Field(
        True, description="On a GPU, park evicted models in host memory (weights to CPU) instead of stopping them."
    )
    load_timeout_s: float = Field(900.0, gt=0, description="Deadline for a runtime to become ready (s).")
    warm_runtimes: bool = Field(
        True,
        description="Fork runtimes from a process that imported torch/transformers once (Linux), so a model "
        "switch costs the weights' load, not a 3-7 s interpreter start; off: a fresh `llmi runtime` per model.",
    )
    spare_runtime: bool = Field(
        True,
        description="With warm runtimes, keep one runtime forked ahead, warmed up on a model of a few KiB, "
        "waiting for the next model: a switch skips the fork, the start-up and the first load's one-time costs "
        "(tiny models, 2 cores: 0.16 s against 0.21-0.23 s without; no gain back to back, while it still warms "
        "up). It costs about 70 MiB, counted with the fork server's; the ready runtimes are measured again once "
        "it is warm (the pages it copies as it warms up stop being shared).",
    )
    idle_timeout_s: float = Field(
        600.0, ge=0, description="Unload a model idle this long (s) when LLM_AUTO_UNLOAD_MODELS is on."
    )
    drain_timeout_s: float = Field(30.0, ge=0, description="Grace for in-flight requests at shutdown (s).")
    request_timeout_s: float = Field(
        600.0, gt=0, description="Longest a runtime may take to answer (s); streams reset it per chunk."
    )
    sse_keepalive_s: float = Field(
        5.0,
        gt=0,
        description="While a streamed request waits for its model to load, an SSE comment line is sent this often "
        "(s), so clients and proxies with read timeouts do not give up.",
    )
    upstream_connect_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Router to runtime: longest wait for a connection (s), pooled or new; there is no shared "
        "connection ceiling, so this only bites when a runtime does not accept.",
    )
    rescan_interval_s: float = Field(5.0, gt=0, description="How often the models folder is scanned again (s).")
