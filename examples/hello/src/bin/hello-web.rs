//! A small web service for Gantry's example: answers `/` with its version and
//! instance, `/healthz` with 200, and `/slow?ms=N` after N milliseconds.
//! It listens on $PORT and reads its version from the VERSION file beside it.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn version() -> String {
    std::fs::read_to_string("VERSION")
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn answer(mut stream: TcpStream, version: &str, instance: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Read and drop the headers.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match path.split_once('?').map_or(path, |(p, _)| p) {
        "/healthz" => ("200 OK", "ok\n".to_owned()),
        "/version" => ("200 OK", format!("{version}\n")),
        "/slow" => {
            let ms = path
                .split_once("ms=")
                .and_then(|(_, v)| v.parse::<u64>().ok())
                .unwrap_or(1000);
            std::thread::sleep(Duration::from_millis(ms));
            ("200 OK", format!("slow {ms}ms from version {version}\n"))
        }
        "/" => (
            "200 OK",
            format!("hello from version {version} ({instance})\n"),
        ),
        _ => ("404 Not Found", "not found\n".to_owned()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".to_owned());
    let version = version();
    let instance = std::env::var("GANTRY_INSTANCE").unwrap_or_default();
    let listener = match TcpListener::bind(("127.0.0.1", port.parse::<u16>().unwrap_or(8080))) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("hello-web: cannot listen on port {port}: {e}");
            std::process::exit(1);
        }
    };
    println!("hello-web version {version} listening on 127.0.0.1:{port}");
    for stream in listener.incoming().flatten() {
        let version = version.clone();
        let instance = instance.clone();
        std::thread::spawn(move || {
            if let Err(e) = answer(stream, &version, &instance) {
                eprintln!("hello-web: {e}");
            }
        });
    }
}
