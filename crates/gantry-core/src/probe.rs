//! `GET /` with a Host header through a host's proxy: what `gantry test`
//! asks of each route. A remote host is probed from the host itself
//! (`gantry agent probe` over ssh), so the answer is the proxy's own.

use crate::Error;
use crate::config::resolve::{Host, Reach};
use crate::configure::OpenShell;
use crate::host::{remote_gantry, shell_quote};

/// The status code of `http://name/` through the proxy at `proxy` on `host`.
pub fn route(host: &Host, proxy: &str, name: &str, shell: OpenShell<'_>) -> Result<u16, Error> {
    if host.reach == Reach::Local {
        return http(proxy, name);
    }
    let ran = shell(host)?.run(
        &remote_gantry(&format!(
            "agent probe --proxy {} --name {}",
            shell_quote(proxy),
            shell_quote(name)
        )),
        None,
    )?;
    ran.stdout_text()
        .trim()
        .parse()
        .map_err(|_| Error::ProbeFailed {
            name: name.to_owned(),
            proxy: proxy.to_owned(),
            message: ran
                .stderr
                .trim()
                .lines()
                .last()
                .unwrap_or("no answer")
                .to_owned(),
        })
}

/// `GET /` with `Host: name` on the proxy at `proxy`, from this machine:
/// the status code.
pub fn http(proxy: &str, name: &str) -> Result<u16, Error> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let fail = |message: String| Error::ProbeFailed {
        name: name.to_owned(),
        proxy: proxy.to_owned(),
        message,
    };
    let addr = proxy
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| fail("not an address".to_owned()))?;
    // A proxy on every address is probed on loopback.
    let addr = if addr.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let timeout = std::time::Duration::from_secs(5);
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| fail(e.to_string()))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| fail(e.to_string()))?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {name}\r\nUser-Agent: gantry-test\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| fail(e.to_string()))?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).map_err(|e| fail(e.to_string()))?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| fail(format!("not an HTTP answer: {line:?}")))
}
