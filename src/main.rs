fn main() -> std::process::ExitCode {
    isboot::cli::main()
}
