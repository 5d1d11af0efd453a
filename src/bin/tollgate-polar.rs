fn main() -> std::process::ExitCode {
    tollgate::polar::run()
}
