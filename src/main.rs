//! The `dfc` executable; everything lives in [`dfc::cli`].

fn main() -> std::process::ExitCode {
    dfc::cli::main_with_args(std::env::args_os())
}
