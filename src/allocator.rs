//! The process's allocator: jemalloc, not the system's. A request allocates and frees dozens of
//! small buffers across threads (hyper's, the plugin host's, a plugin's effects), and glibc's
//! malloc costs the built-in chain ~1.3 µs of CPU a request more (docs/performance.md,
//! "2026-12-05, morning: jemalloc"). `src/main.rs` and every benchmark that measures the gateway
//! include this one file (`#[path]`), so the benchmarks measure what ships.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// jemalloc's options are compiled into it: `.cargo/config.toml` sets
// `JEMALLOC_SYS_WITH_MALLOC_CONF`, which tikv-jemalloc-sys passes to jemalloc's build
// (`--with-malloc-conf`); `_RJEM_MALLOC_CONF` in the environment is read after them, so an
// operator can override any of them without a rebuild (docs/operations.md). The one set:
// `tcache_gc_incr_bytes:8388608`, a thread's cache trimmed once per 8 MiB it allocates instead of
// once per 64 KiB (jemalloc 5.3's default), where the trimming ran every few requests and took
// ~6 % of the instructions of a proxied request (docs/performance.md, "2026-12-05, afternoon:
// jemalloc's thread-cache GC"). What a thread cache may hold is bounded by its slots either way;
// it is only trimmed less often.
