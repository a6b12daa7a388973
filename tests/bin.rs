//! The `tokentrail` CLI under another name, so cargo builds it fresh for the end-to-end tests.

fn main() -> std::process::ExitCode {
    tokentrail::main()
}
