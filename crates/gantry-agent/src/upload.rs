//! `PUT /v1/blobs/{digest}[?offset=N]`: an upload streamed from the request
//! body into the blob store, never held in memory whole. The body's chunks
//! cross a small channel to a blocking task that writes and hashes them
//! (`BlobStore::receive`); the channel's bound is the backpressure. A body
//! that breaks off, or goes quiet for `IDLE`, ends the upload as interrupted
//! and the bytes that arrived stay for the next upload to resume from.

use std::io::{self, Read};
use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use crate::artifact::ArtifactError;
use crate::artifact::{BlobStore, Received};

/// How long an upload may send nothing before it counts as interrupted.
pub const IDLE: Duration = gantry_core::agent_api::UPLOAD_IDLE;

/// What crosses from the request to the writer.
enum Piece {
    Data(Bytes),
    /// The body ended where its sender said it would.
    End,
    /// The body broke off.
    Broken(io::Error),
}

/// Streams `body` into `blobs` as blob `digest`, continuing at `offset`.
pub async fn receive(
    blobs: BlobStore,
    digest: String,
    offset: u64,
    body: Body,
) -> Result<Received, ArtifactError> {
    let (sender, pieces) = mpsc::channel::<Piece>(16);
    let writer = tokio::task::spawn_blocking(move || {
        blobs.receive(
            &digest,
            offset,
            PieceReader {
                pieces,
                current: Bytes::new(),
                ended: false,
            },
        )
    });
    let mut body = body;
    loop {
        let piece = match tokio::time::timeout(IDLE, body.frame()).await {
            Err(_) => Piece::Broken(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("nothing arrived for {}s", IDLE.as_secs()),
            )),
            Ok(None) => Piece::End,
            Ok(Some(Err(e))) => Piece::Broken(io::Error::other(e.to_string())),
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => Piece::Data(data),
                Err(_) => continue, // trailers
            },
        };
        let last = !matches!(piece, Piece::Data(_));
        // A writer that stopped early (already stored, wrong offset) has
        // dropped its end: stop reading and let it answer.
        if sender.send(piece).await.is_err() || last {
            break;
        }
    }
    drop(sender);
    writer.await.map_err(|e| ArtifactError::Io {
        action: "write",
        path: std::path::PathBuf::from("the upload"),
        source: io::Error::other(e.to_string()),
    })?
}

/// The body's pieces as a `Read`, on the blocking side. Running out of
/// pieces without `End` (the request was dropped) is an error too.
struct PieceReader {
    pieces: mpsc::Receiver<Piece>,
    current: Bytes,
    ended: bool,
}

impl Read for PieceReader {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.pieces.blocking_recv() {
                Some(Piece::Data(data)) => self.current = data,
                Some(Piece::End) => self.ended = true,
                Some(Piece::Broken(e)) => return Err(e),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection closed before the upload's end",
                    ));
                }
            }
        }
        let n = buffer.len().min(self.current.len());
        buffer[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}
