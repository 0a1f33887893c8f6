//! The process's allocator: jemalloc, not the system's. A request allocates and frees dozens of
//! small buffers across threads (hyper's, the plugin host's, a plugin's effects), and glibc's
//! malloc costs the built-in chain ~1.3 µs of CPU a request more (docs/performance.md,
//! "2026-12-05, morning: jemalloc"). `src/main.rs` and every benchmark that measures the gateway
//! include this one file (`#[path]`), so the benchmarks measure what ships.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// One option differs from jemalloc's defaults, compiled in through `.cargo/config.toml`
// (`JEMALLOC_SYS_WITH_MALLOC_CONF`): `tcache_gc_incr_bytes:8388608`, a thread's cache trimmed
// once per 8 MiB allocated instead of per 64 KiB, where the trimming took ~6 % of a proxied
// request's instructions. `_RJEM_MALLOC_CONF` overrides it at run time. Why and what was
// measured: docs/architecture.md, "Allocator".
