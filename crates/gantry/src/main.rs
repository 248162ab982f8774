//! The gantry binary: hands its arguments to the CLI and exits with its code.

fn main() -> std::process::ExitCode {
    gantry_cli::run(std::env::args_os())
}
