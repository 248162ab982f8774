//! A WebSocket echo service for tests: listens on $PORT, answers each text
//! message with `<version>: <message>` (the version read from the VERSION
//! file beside it at start), and plain `GET /healthz` and `GET /version`
//! over HTTP. One thread per connection; SIGTERM ends it at once.

use std::io::Write;
use std::net::{TcpListener, TcpStream};

use tungstenite::Message;

fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".to_owned());
    let version = std::fs::read_to_string("VERSION")
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let listener = match port
        .parse::<u16>()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        .and_then(|port| TcpListener::bind(("127.0.0.1", port)))
    {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("ws-echo: cannot listen on port {port}: {e}");
            std::process::exit(1);
        }
    };
    println!("ws-echo version {version} listening on 127.0.0.1:{port}");
    for stream in listener.incoming().flatten() {
        let version = version.clone();
        std::thread::spawn(move || {
            if let Err(e) = serve(stream, &version) {
                eprintln!("ws-echo: {e}");
            }
        });
    }
}

fn serve(mut stream: TcpStream, version: &str) -> Result<(), Box<dyn std::error::Error>> {
    // Plain HTTP for the health check and the version; the rest is a WebSocket.
    let mut head = [0u8; 64];
    let seen = stream.peek(&mut head)?;
    let head = String::from_utf8_lossy(&head[..seen]);
    let plain = |path: &str| head.starts_with(&format!("GET {path} ")) && !head.contains("Upgrade");
    for (path, body) in [
        ("/healthz", "ok".to_owned()),
        ("/version", version.to_owned()),
    ] {
        if plain(path) {
            let mut request = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut request)?;
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
            return Ok(());
        }
    }
    let mut socket = tungstenite::accept(stream)?;
    loop {
        match socket.read()? {
            Message::Text(text) => socket.send(Message::text(format!("{version}: {text}")))?,
            Message::Close(_) => return Ok(()),
            _ => {}
        }
    }
}
