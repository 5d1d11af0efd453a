// The hot path allocates small, short-lived buffers on every call; mimalloc
// serves those with less contention between worker threads than glibc's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tollgate::cli::run()
}
