//! The `dfc` executable; everything lives in [`dfc::commands`].

// The compiler allocates many small strings and vectors; mimalloc makes a large compile
// measurably faster than the system allocator (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Rust ignores SIGPIPE, so writing to a closed pipe (`dfc inspect … | head`) would fail
    // every later print; end quietly instead, as other command-line tools do.
    #[cfg(unix)]
    // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    dfc::commands::main_with_args(std::env::args_os())
}
