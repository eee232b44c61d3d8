"""Configuration of a simulated replica, and how its KV cache capacity is derived.

The default HBM capacity is what vLLM would find on one H100 80GB per tensor-parallel rank: the memory the
driver reports, times `--gpu-memory-utilization` (0.9 here), less the model's bf16 weights and a reserve for
activations, CUDA graphs and communication buffers, divided by the KV bytes of one block.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from gateway.profiles import DEFAULT_PROFILE, Profile, get_profile

GIB = 2**30

GPU_MEMORY_BYTES = 81_559 * 2**20
"""What `nvidia-smi` reports for an H100 80GB HBM3 (79.6 GiB)."""

GPU_MEMORY_UTILIZATION = 0.9

NON_KV_RESERVE_BYTES = 2 * GIB
"""Per GPU, besides the weights: activations of a max-size batch, CUDA graphs, NCCL buffers (an estimate)."""

MODEL_WEIGHT_BYTES: dict[str, int] = {
    "h100-llama3-8b": 8_030_261_248 * 2,
    "h100-llama3-70b": 70_553_706_496 * 2,
}
"""bf16 weights of the model each profile was calibrated on."""

TENSOR_PARALLEL_CHOICES = (1, 2, 4, 8)

KV_EVENTS_ENCODINGS = ("array", "map")


class ConfigError(ValueError):
    """A configuration that a real engine would refuse to start with."""


@dataclass
class FaultSettings:
    """Fault knobs of one replica; see `loadtest.sim.faults` for what each one does."""

    error_rate: float = 0.0
    added_latency: float = 0.0
    slowdown: float = 1.0
    die_after_tokens: int | None = None
    restart_after: float | None = None
    stream_error_after_tokens: int | None = None
    draining: bool = False

    def validate(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise ConfigError("error_rate must lie in [0, 1]")
        if self.added_latency < 0:
            raise ConfigError("added_latency must be >= 0")
        if self.slowdown <= 0:
            raise ConfigError("slowdown must be > 0")
        for name in ("die_after_tokens", "stream_error_after_tokens"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be >= 0")
        if self.restart_after is not None and self.restart_after < 0:
            raise ConfigError("restart_after must be >= 0")


@dataclass
class SimConfig:
    """Everything one simulated replica needs. Several replicas of a fleet share one config."""

    model: str = "sim-llama3-8b"
    profile: str = DEFAULT_PROFILE
    tensor_parallel: int | None = None
    max_model_len: int = 131_072
    block_size: int = 16
    gpu_memory_utilization: float = GPU_MEMORY_UTILIZATION
    hbm_blocks: int | None = None
    dram_blocks: int = 0
    storage_blocks: int = 0
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    time_scale: float = 1.0
    tokenizer: str | None = None
    enable_prompt_tokens_details: bool = True
    default_max_tokens: int = 256
    stream_interval: int = 1
    """Output tokens per streamed chunk after the first, as vLLM's --stream-interval."""
    hash_seed: int | None = None
    vllm_version: str = "0.26.0"

    kv_events_port: int | None = None
    kv_events_replay_port: int | None = None
    kv_events_encoding: str = "map"
    kv_events_topic: str = ""
    kv_events_bytes_hashes: bool = False
    kv_events_replay_topic: bool = True
    kv_events_buffer_steps: int = 10_000
    data_parallel_rank: int | None = None

    faults: FaultSettings = field(default_factory=FaultSettings)

    def latency_profile(self) -> Profile:
        return get_profile(self.profile).scaled(self.effective_tensor_parallel())

    def block_bytes(self) -> int:
        return get_profile(self.profile).kv_bytes_per_token * self.block_size

    def blocks_for_gib(self, gib: float) -> int:
        return int(gib * GIB // self.block_bytes())

    def effective_tensor_parallel(self) -> int:
        """The configured degree, or the smallest power of two whose HBM holds the weights and one
        `max_model_len` sequence of KV (as vLLM requires before it starts)."""
        if self.tensor_parallel is not None:
            return self.tensor_parallel
        if self.hbm_blocks is not None:
            return 1
        for degree in TENSOR_PARALLEL_CHOICES:
            if self._derived_hbm_blocks(degree) * self.block_size >= self.max_model_len:
                return degree
        return TENSOR_PARALLEL_CHOICES[-1]

    def _derived_hbm_blocks(self, tensor_parallel: int) -> int:
        weights = MODEL_WEIGHT_BYTES.get(self.profile, 0)
        per_gpu = GPU_MEMORY_BYTES * self.gpu_memory_utilization - NON_KV_RESERVE_BYTES
        kv_bytes = tensor_parallel * per_gpu - weights
        return max(0, int(kv_bytes // self.block_bytes()))

    def hbm_block_count(self) -> int:
        if self.hbm_blocks is not None:
            return self.hbm_blocks
        return self._derived_hbm_blocks(self.effective_tensor_parallel())

    def validate(self) -> None:
        get_profile(self.profile)
        if self.tensor_parallel is not None and self.tensor_parallel < 1:
            raise ConfigError("tensor_parallel must be >= 1")
        for name in ("block_size", "max_model_len", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.dram_blocks < 0 or self.storage_blocks < 0:
            raise ConfigError("dram_blocks and storage_blocks must be >= 0")
        if self.time_scale <= 0:
            raise ConfigError("time_scale must be > 0")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError("gpu_memory_utilization must lie in (0, 1]")
        if self.stream_interval < 1:
            raise ConfigError("stream_interval must be >= 1")
        if self.default_max_tokens < 1:
            raise ConfigError("default_max_tokens must be >= 1")
        if self.kv_events_encoding not in KV_EVENTS_ENCODINGS:
            raise ConfigError(f"kv_events_encoding must be one of {', '.join(KV_EVENTS_ENCODINGS)}")
        if self.kv_events_buffer_steps < 1:
            raise ConfigError("kv_events_buffer_steps must be >= 1")
        hbm = self.hbm_block_count()
        if hbm * self.block_size < self.max_model_len:
            raise ConfigError(
                f"the KV cache holds {hbm} blocks of {self.block_size} tokens "
                f"({hbm * self.block_size} tokens), "
                f"less than max_model_len={self.max_model_len}: raise --hbm-blocks or --tensor-parallel, "
                "or lower --max-model-len"
            )
        self.faults.validate()

    def replace(self, **changes: object) -> SimConfig:
        return dataclasses.replace(self, **changes)
