//! `gocred ssh-proxy HOST PORT` (ssh's `ProxyCommand gocred ssh-proxy %h %p`): a tunnel through
//! the broker, authenticated with the session's token + proof, copied on stdin/stdout; and the
//! `~/.ssh/config` block `gocred setup --ssh` writes. A failure prints one line and exits
//! non-zero before ssh starts its own handshake.

use crate::client::state::Store;
use anyhow::Context;
use clap::Args;
use std::io::IsTerminal;
use std::path::Path;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug, Args)]
pub struct SshProxyArgs {
    /// The host ssh connects to (`%h`): one the broker announces as SSH-served.
    pub host: String,
    /// The port (`%p`): 22 or the SSH server's configured port.
    pub port: u16,
}

/// Copy until EOF, then close the write side.
async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(mut from: R, mut to: W) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
    }
    to.shutdown().await
}

pub async fn run(args: SshProxyArgs) -> anyhow::Result<()> {
    let (session, proof) = {
        let store = Store::lock()?;
        let (s, proof, _) = crate::client::session::credentials(&store, false, std::io::stdin().is_terminal()).await?;
        (s, proof)
        // The state lock is released here: a tunnel lives for the whole ssh session.
    };
    let client = crate::client::api::BrokerClient::new(&session.broker, session.ca_cert.as_deref())?;
    let remote = client.tunnel(session.token.expose(), &proof, &args.host, args.port).await?;
    let (rr, rw) = tokio::io::split(remote);
    // Remote → stdout finishing ends the tunnel; stdin EOF only half-closes it.
    let up = tokio::spawn(pump(tokio::io::stdin(), rw));
    pump(rr, tokio::io::stdout()).await.context("tunnel closed")?;
    up.abort();
    Ok(())
}

/// Markers of the block `gocred setup --ssh` owns in `~/.ssh/config`.
pub const BLOCK_BEGIN: &str = "# BEGIN gocred (written by `gocred setup --ssh`; edits inside are replaced)";
pub const BLOCK_END: &str = "# END gocred";

/// The `Host` entries for `hosts`, each tunnelled by `gocred ssh-proxy`.
pub fn ssh_config_block(me: &str, hosts: &[String]) -> String {
    let mut b = format!("{BLOCK_BEGIN}\n");
    for h in hosts {
        b.push_str(&format!("Host {h}\n    ProxyCommand {me} ssh-proxy %h %p\n"));
    }
    b.push_str(BLOCK_END);
    b.push('\n');
    b
}

/// `text` with gocred's block replaced by `block`, first (ssh uses the first value it finds, so
/// nothing earlier can override the ProxyCommand); the rest kept byte for byte. A begin marker
/// without its end is refused (everything after it would be lost).
pub fn with_block(text: &str, block: &str) -> Result<String, &'static str> {
    let mut out = String::from(block);
    let mut inside = false;
    for line in text.split_inclusive('\n') {
        let t = line.trim_end();
        if t == BLOCK_BEGIN {
            inside = true;
        } else if inside && t == BLOCK_END {
            inside = false;
        } else if !inside {
            out.push_str(line);
        }
    }
    if inside {
        return Err("has a `# BEGIN gocred` line without its `# END gocred`; fix or remove it, then run this again");
    }
    Ok(out)
}

/// A path ssh can run as a ProxyCommand as is: no spaces, shell characters or `%` tokens.
pub fn plain_command_path(p: &str) -> bool {
    p.starts_with('/') && p.chars().all(|c| c.is_ascii_alphanumeric() || "/._+-".contains(c))
}

/// Write gocred's block into `~/.ssh/config` (0600, atomically; `~/.ssh` created 0700).
pub fn write_ssh_config(home: &Path, block: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = home.join(".ssh");
    crate::fsutil::ensure_private_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("config");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let text = with_block(&text, block).map_err(|e| anyhow::anyhow!("{} {e}", path.display()))?;
    crate::fsutil::write_private_atomic(&path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_is_first_replaced_in_place_and_the_rest_kept() {
        let block = ssh_config_block("/bin/gocred", &["git.corp.example".into()]);
        assert!(block.contains("Host git.corp.example\n    ProxyCommand /bin/gocred ssh-proxy %h %p\n"));
        let mine = "Host *\n    ServerAliveInterval 30\n";
        let once = with_block(mine, &block).unwrap();
        assert!(once.starts_with(BLOCK_BEGIN) && once.ends_with(mine), "{once}");
        assert_eq!(with_block(&once, &block).unwrap(), once, "idempotent");
        let other = ssh_config_block("/bin/gocred", &["b.example".into()]);
        let twice = with_block(&once, &other).unwrap();
        assert!(!twice.contains("git.corp.example") && twice.contains("b.example") && twice.ends_with(mine));
        let broken = format!("{BLOCK_BEGIN}\nHost x\n{mine}");
        assert!(with_block(&broken, &block).is_err(), "a block without its end would swallow the rest");
        assert!(plain_command_path("/usr/local/bin/gocred"));
        for bad in ["gocred", "/a b/gocred", "/x/%h", "/x/$(id)", "/x/`id`", "/x;y"] {
            assert!(!plain_command_path(bad), "{bad}");
        }
    }
}
