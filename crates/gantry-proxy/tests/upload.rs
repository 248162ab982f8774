//! A 100 MB upload streams through the proxy, and back: the bytes arrive
//! intact and the process never holds more than a small part of them.
//! Alone in its test binary, so that the memory it measures is its own.
#![allow(clippy::unwrap_used)]

mod support;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use gantry_proxy::{Route, RouteTable};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};
use hyper::{Request, Response, StatusCode};
use support::{TestProxy, client, upstream};

const SIZE: u64 = 100 << 20;
const CHUNK: usize = 64 << 10;
/// Far below the 100 MB that buffering the body would take.
const MAX_GROWTH: u64 = 40 << 20;

/// Pseudo-random bytes, the same for the same seed, made as they are sent.
struct Generated {
    left: u64,
    state: u64,
}

impl Generated {
    fn new(size: u64) -> Generated {
        Generated {
            left: size,
            state: 0x9e37_79b9_7f4a_7c15,
        }
    }

    fn next_chunk(&mut self) -> Option<Bytes> {
        if self.left == 0 {
            return None;
        }
        let len = usize::try_from(self.left.min(CHUNK as u64)).unwrap();
        let mut chunk = Vec::with_capacity(len);
        while chunk.len() < len {
            // xorshift64
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            chunk.extend_from_slice(&self.state.to_le_bytes()[..(len - chunk.len()).min(8)]);
        }
        self.left -= len as u64;
        Some(Bytes::from(chunk))
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = support::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.next_chunk().map(|c| Ok(Frame::data(c))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// FNV-1a over 8-byte words, carried across chunk boundaries.
#[derive(Default)]
struct Digest {
    hash: u64,
    carry: Vec<u8>,
    bytes: u64,
}

impl Digest {
    fn update(&mut self, mut data: &[u8]) {
        self.bytes += data.len() as u64;
        if self.hash == 0 {
            self.hash = 0xcbf2_9ce4_8422_2325;
        }
        if !self.carry.is_empty() {
            let take = (8 - self.carry.len()).min(data.len());
            self.carry.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.carry.len() == 8 {
                let word = u64::from_le_bytes(self.carry[..].try_into().unwrap());
                self.mix(word);
                self.carry.clear();
            }
        }
        let mut words = data.chunks_exact(8);
        for word in &mut words {
            self.mix(u64::from_le_bytes(word.try_into().unwrap()));
        }
        self.carry.extend_from_slice(words.remainder());
    }

    fn mix(&mut self, word: u64) {
        self.hash = (self.hash ^ word).wrapping_mul(0x0100_0000_01b3);
    }

    fn finish(mut self) -> (u64, u64) {
        let tail = std::mem::take(&mut self.carry);
        for byte in tail {
            self.mix(u64::from(byte));
        }
        (self.hash, self.bytes)
    }
}

fn memory_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_upload_streams_through_intact_without_growing_memory() {
    // The upstream streams the body straight back as it reads it.
    let echo = upstream(
        "echo",
        |request: Request<hyper::body::Incoming>| async move {
            Ok(Response::new(
                request.into_body().map_err(support::BoxError::from).boxed(),
            ))
        },
    )
    .await;
    let proxy = TestProxy::start();
    proxy
        .put_routes(&RouteTable {
            routes: vec![Route::new("files", vec![echo.addr]).path_prefix("/upload", false)],
        })
        .await;
    let client = client();
    // Warm up: connections, pools and buffers exist before measuring.
    let small = Request::post(proxy.url("/upload"))
        .header("host", "files.test")
        .body(support::full("x"))
        .unwrap();
    assert_eq!(support::send(&client, small).await.status, StatusCode::OK);

    // Resetting the peak lets VmHWM say what this upload took; where the
    // kernel does not allow it, the peak so far is the baseline.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = memory_kib("VmRSS:").max(memory_kib("VmHWM:"));

    let mut expected = Digest::default();
    let mut generator = Generated::new(SIZE);
    while let Some(chunk) = generator.next_chunk() {
        expected.update(&chunk);
    }
    let request = Request::post(proxy.url("/upload/big.bin"))
        .header("host", "files.test")
        .body(Generated::new(SIZE).boxed())
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = Digest::default();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            received.update(&data);
        }
    }
    let growth = (memory_kib("VmHWM:").saturating_sub(before)) << 10;
    assert_eq!(
        received.finish(),
        expected.finish(),
        "the bytes came back intact"
    );
    eprintln!(
        "peak memory grew by {} KiB for a {} MiB round trip",
        growth >> 10,
        SIZE >> 20
    );
    assert!(
        growth < MAX_GROWTH,
        "peak memory grew by {} MiB while 100 MiB streamed through",
        growth >> 20
    );
}
