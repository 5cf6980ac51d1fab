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
    let result = rt.block_on(gocred::cli::run(cli));
    // Do not wait for blocking reads still running (ssh-proxy's stdin after the tunnel closed).
    rt.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `gocred netrc | head -1`: the reader is done; not an error (as ripgrep does).
        Err(e) if gocred::cli::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gocred: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(1)
        }
    }
}

/// The tracing filter for `GOCRED_LOG`: the user's directives, with vaultrs/rustify off unless
/// the user named them (they log expected answers, such as a 404 for a record not yet written, as
/// errors; gocred reports real backend failures itself, with context).
fn log_filter(user: Option<&str>) -> String {
    let user = user.map(str::trim).filter(|u| !u.is_empty()).unwrap_or("info");
    let mut f = user.to_string();
    for quiet in ["vaultrs", "rustify"] {
        if !user.split(',').any(|d| d.trim().starts_with(quiet)) {
            f.push_str(&format!(",{quiet}=off"));
        }
    }
    f
}

/// Logs go to stderr; `GOCRED_LOG` sets the filter (default `info`; vaultrs/rustify's own
/// error logs are off because gocred reports those failures itself, with context),
/// `GOCRED_LOG_FORMAT=json` switches to JSON lines.
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::new(log_filter(std::env::var("GOCRED_LOG").ok().as_deref()));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("GOCRED_LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().init();
    } else {
        builder.with_ansi(false).init();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn vault_client_logs_stay_off_whatever_the_user_filter() {
        assert_eq!(super::log_filter(None), "info,vaultrs=off,rustify=off");
        assert_eq!(super::log_filter(Some("debug")), "debug,vaultrs=off,rustify=off");
        assert_eq!(super::log_filter(Some("info,vaultrs=debug")), "info,vaultrs=debug,rustify=off");
    }
}
