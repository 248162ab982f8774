//! An upload (`PUT /v1/blobs/{digest}[?offset=N]`) streamed from the request
//! body into the blob store, never held in memory whole. The body's chunks
//! cross a small channel to a blocking task that writes and hashes them
//! (`BlobStore::receive`); the channel's bound is the backpressure. A body
//! that breaks off, or goes quiet for `IDLE`, ends the upload as interrupted
//! and the bytes that arrived stay for the next upload to resume from.

use std::io::{self, Read};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use gantry_core::agent_api::BlobList;
use hyper::body::Bytes;
use tokio::sync::mpsc;

use gantry_core::Code;
use gantry_core::file::FileError;

use crate::artifact::ArtifactError;
use crate::artifact::{BlobStore, Received};
use crate::error::AgentError;

/// How long an upload may send nothing before it counts as interrupted.
const IDLE: Duration = gantry_core::agent_api::UPLOAD_IDLE;

/// `POST /v1/blobs/missing`: which of `digests` the agent lacks, how much
/// of each an interrupted upload left, and which are being received now.
pub(crate) fn missing(blobs: &BlobStore, digests: &[String]) -> BlobList {
    let digests = blobs.missing(digests);
    let partial = digests
        .iter()
        .filter_map(|d| blobs.partial(d).map(|held| (d.clone(), held)))
        .collect();
    let uploading = digests
        .iter()
        .filter(|d| blobs.uploading(d))
        .cloned()
        .collect();
    BlobList {
        digests,
        partial,
        uploading,
    }
}

/// What crosses from the request to the writer.
enum Piece {
    Data(Bytes),
    /// The body ended where its sender said it would.
    End,
    /// The body broke off.
    Broken(io::Error),
}

/// `PUT /v1/blobs/{digest}[?offset=N]`: [`receive`], its failure said as
/// the API says it.
pub(crate) async fn put<E: std::fmt::Display>(
    blobs: BlobStore,
    digest: String,
    offset: u64,
    body: impl Stream<Item = Result<Bytes, E>> + Unpin,
) -> Result<Received, AgentError> {
    receive(blobs, digest.clone(), offset, body)
        .await
        .inspect_err(|e| tracing::warn!(%digest, offset, "upload not stored: {e}"))
        .map_err(|e| match e {
            ArtifactError::OffsetMismatch { .. } => AgentError::conflict(
                Code::ArtifactOffsetMismatch,
                e.to_string(),
                &e.hint().unwrap_or_default(),
            ),
            ArtifactError::Interrupted { .. } => AgentError::Incomplete {
                code: Code::ArtifactIncomplete,
                message: e.to_string(),
                hint: e.hint(),
            },
            ArtifactError::UploadInProgress { .. } => AgentError::conflict(
                Code::ArtifactUploadInProgress,
                e.to_string(),
                &e.hint().unwrap_or_default(),
            ),
            ArtifactError::NoRoom { .. } => AgentError::conflict(
                Code::ArtifactNoRoom,
                e.to_string(),
                &e.hint().unwrap_or_default(),
            ),
            ArtifactError::Io(_) => {
                AgentError::failed(Code::ArtifactFailed, format!("blob {digest}: {e}"))
            }
            _ => AgentError::invalid(
                Code::ArtifactChecksum,
                format!("blob {digest} was not stored: {e}"),
                "upload the file again; its bytes did not match their digest",
            ),
        })
}

/// Streams `body` into `blobs` as blob `digest`, continuing at `offset`.
async fn receive<E: std::fmt::Display>(
    blobs: BlobStore,
    digest: String,
    offset: u64,
    body: impl Stream<Item = Result<Bytes, E>> + Unpin,
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
        let piece = match tokio::time::timeout(IDLE, body.next()).await {
            Err(_) => Piece::Broken(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("nothing arrived for {}s", IDLE.as_secs()),
            )),
            Ok(None) => Piece::End,
            Ok(Some(Err(e))) => Piece::Broken(io::Error::other(e.to_string())),
            Ok(Some(Ok(data))) => Piece::Data(data),
        };
        let last = !matches!(piece, Piece::Data(_));
        // A writer that stopped early (already stored, wrong offset) has
        // dropped its end: stop reading and let it answer.
        if sender.send(piece).await.is_err() || last {
            break;
        }
    }
    drop(sender);
    writer.await.map_err(|e| {
        ArtifactError::Io(FileError {
            action: "write",
            path: "the upload".into(),
            cause: io::Error::other(e.to_string()),
        })
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
