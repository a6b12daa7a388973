//! The `tokentrail` binary. Everything lives in the library (`cli/src/lib.rs`).

fn main() -> std::process::ExitCode {
    tokentrail::main()
}
