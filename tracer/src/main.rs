//! The `tracer` binary: everything, exit codes included, is in the library
//! ([`tracer::main`]).

fn main() -> std::process::ExitCode {
    tracer::main()
}
