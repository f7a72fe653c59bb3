//! The `fepd` binary: parse the command line, set up logging, hand over to the library.

fn main() -> std::process::ExitCode {
    fepd::cli::main()
}
