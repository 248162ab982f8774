//! Health checks: an HTTP GET that answers 2xx or 3xx, a TCP connect, or a
//! command that exits 0, each bounded by the check's timeout. A check says
//! only pass or fail, with a reason for the failure.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use gantry_core::agent_api::v1::Check;

use crate::process::Confinement;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Runs one check against an instance listening on `port` (if it has one).
pub async fn probe(
    check: &Check,
    port: Option<u16>,
    timeout: Duration,
    cwd: &Path,
    env: &BTreeMap<String, String>,
    confinement: &Confinement,
) -> Result<(), String> {
    match tokio::time::timeout(timeout, run(check, port, cwd, env, confinement)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {}ms", timeout.as_millis())),
    }
}

async fn run(
    check: &Check,
    port: Option<u16>,
    cwd: &Path,
    env: &BTreeMap<String, String>,
    confinement: &Confinement,
) -> Result<(), String> {
    match check {
        Check::Tcp => {
            let port = port.ok_or("the service has no port")?;
            TcpStream::connect(("127.0.0.1", port))
                .await
                .map(drop)
                .map_err(|e| format!("connect to port {port}: {e}"))
        }
        Check::Http { path } => {
            let port = port.ok_or("the service has no port")?;
            http_status(port, path).await.and_then(|status| {
                if (200..400).contains(&status) {
                    Ok(())
                } else {
                    Err(format!("GET {path} answered {status}"))
                }
            })
        }
        Check::Command { command } => {
            let mut sh = tokio::process::Command::new("/bin/sh");
            // The service's own check: run as the service runs, not as the agent.
            crate::process::confine(sh.as_std_mut(), confinement);
            let status = sh
                .arg("-c")
                .arg(command)
                .current_dir(cwd)
                .env_clear()
                .envs(env)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .map_err(|e| format!("run `{command}`: {e}"))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("`{command}` {status}"))
            }
        }
    }
}

/// The status code of `GET path` on loopback. HTTP/1.0 with `Connection:
/// close` keeps this to a status line: a health check needs nothing more.
async fn http_status(port: u16, path: &str) -> Result<u16, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect to port {port}: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: gantry-health\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send request: {e}"))?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 64];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("read answer: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| "the answer is not HTTP".to_owned())?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn serve_once(status: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        port
    }

    /// Probes from the temporary directory, unconfined.
    async fn probe_here(
        check: &Check,
        port: Option<u16>,
        timeout: Duration,
        env: &BTreeMap<String, String>,
    ) -> Result<(), String> {
        let cwd = std::env::temp_dir();
        probe(check, port, timeout, &cwd, env, &Confinement::default()).await
    }

    #[tokio::test]
    async fn http_checks_pass_on_2xx_and_fail_otherwise() {
        let env = BTreeMap::new();
        let check = Check::Http {
            path: "/healthz".into(),
        };
        let ok = serve_once("204 No Content").await;
        assert_eq!(
            probe_here(&check, Some(ok), Duration::from_secs(2), &env).await,
            Ok(())
        );
        let bad = serve_once("503 Service Unavailable").await;
        let err = probe_here(&check, Some(bad), Duration::from_secs(2), &env)
            .await
            .expect_err("503 fails");
        assert!(err.contains("503"), "{err}");
    }

    #[tokio::test]
    async fn tcp_and_command_checks() {
        let env = BTreeMap::from([("WANT".to_owned(), "yes".to_owned())]);
        let port = serve_once("200 OK").await;
        assert!(
            probe_here(&Check::Tcp, Some(port), Duration::from_secs(2), &env)
                .await
                .is_ok()
        );
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        assert!(
            probe_here(&Check::Tcp, Some(closed), Duration::from_secs(2), &env)
                .await
                .is_err()
        );
        let pass = Check::Command {
            command: "test \"$WANT\" = yes".into(),
        };
        assert!(
            probe_here(&pass, None, Duration::from_secs(2), &env)
                .await
                .is_ok()
        );
        let slow = Check::Command {
            command: "sleep 5".into(),
        };
        let err = probe_here(&slow, None, Duration::from_millis(200), &env)
            .await
            .expect_err("times out");
        assert!(err.contains("200ms"), "{err}");
    }
}
