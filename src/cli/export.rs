pub fn run(_args: &super::ExportArgs) -> std::process::ExitCode {
    eprintln!("isboot export: not available in this build");
    std::process::ExitCode::from(1)
}
