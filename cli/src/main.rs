//! The `tokentrail` binary. Everything lives in the library (`cli/src/lib.rs`).

/// mimalloc: the audit of a large store allocates millions of small values on every core.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tokentrail::main()
}
