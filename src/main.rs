//! `gocred` binary: parse arguments, initialise tracing, dispatch, map errors to exit codes
//! (0 ok, 1 failure with a one-line reason on stderr, 2 usage).
#![forbid(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // GIT_ASKPASS=gocred works as is: git runs `gocred "Username for 'https://…': "`.
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.len() == 2 {
        let a = argv[1].to_string_lossy();
        if a.starts_with("Username for ") || a.starts_with("Password for ") {
            argv.insert(1, "askpass".into());
        }
    }
    let cli = match gocred::cli::Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gocred: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(gocred::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gocred: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(1)
        }
    }
}

/// Logs go to stderr; `GOCRED_LOG` sets the filter (default `info`; vaultrs/rustify's own
/// error logs are off because gocred reports those failures itself, with context),
/// `GOCRED_LOG_FORMAT=json` switches to JSON lines.
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("GOCRED_LOG").unwrap_or_else(|_| EnvFilter::new("info,vaultrs=off,rustify=off"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("GOCRED_LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().init();
    } else {
        builder.with_ansi(false).init();
    }
}
