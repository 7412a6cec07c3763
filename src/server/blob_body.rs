//! The bodies of blob responses: one reader's bytes, or the parts of a `multipart/byteranges`
//! answer, read one after the other between their framing. Only blob bytes are counted as
//! served, never the framing. An error ends a body with an error, which makes hyper cut the
//! connection: the client sees a short body, never a complete-looking wrong one.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use prometheus::IntCounter;

use super::multipart::Multipart;
use super::range::Span;
use super::response::{Body, BodyError};
use super::sendfile::{FileRanges, MAX_RANGE};
use crate::body::Chunk;
use crate::error::Error;
use crate::metrics::RepositoryUsage;
use crate::mirror::{BlobBody, RangedBlob};

/// How one response's blob bytes reach its connection: with `zero_copy`, cached ranges the page
/// cache holds are sent by the socket from the file; every byte is counted on `served`.
pub struct Delivery {
    served: IntCounter,
    zero_copy: Option<FileRanges>,
    /// The repository's count of bytes served from the cache, when that is where they come from.
    from_cache: Option<Arc<RepositoryUsage>>,
}

impl Delivery {
    /// `served` is looked up once per response, not once per chunk.
    pub fn new(
        served: IntCounter,
        zero_copy: Option<FileRanges>,
        from_cache: Option<Arc<RepositoryUsage>>,
    ) -> Delivery {
        Delivery {
            served,
            zero_copy,
            from_cache,
        }
    }

    /// The next chunk of `reader` to send; `Ok(None)` at its end.
    async fn next(&self, reader: &mut BlobBody) -> Result<Option<Bytes>, Error> {
        let next = match &self.zero_copy {
            Some(ranges) => reader.next_piece(MAX_RANGE).await.map(|piece| {
                piece.map(|piece| match piece {
                    Chunk::Bytes(bytes) => bytes,
                    Chunk::File(range) => ranges.placeholder(range),
                })
            }),
            None => reader.next_bytes().await,
        };
        if let Ok(Some(chunk)) = &next {
            self.served.inc_by(chunk.len() as u64);
            if let Some(usage) = &self.from_cache {
                usage.all.add_bytes(chunk.len() as u64);
            }
        }
        next
    }
}

fn aborted(e: Error) -> BodyError {
    tracing::warn!(error = %e, "aborting a blob response");
    BodyError::from(e)
}

/// A body that streams one reader.
pub fn single(reader: BlobBody, delivery: Delivery) -> Body {
    let chunks = stream::unfold(Some((reader, delivery)), |state| async move {
        let (mut reader, delivery) = state?;
        match delivery.next(&mut reader).await {
            Ok(Some(chunk)) => Some((Ok(Frame::data(chunk)), Some((reader, delivery)))),
            Ok(None) => None,
            Err(e) => Some((Err(aborted(e)), None)),
        }
    });
    StreamBody::new(chunks).boxed_unsync()
}

/// A `multipart/byteranges` body of `parts` of `blob`, framed by `layout`.
pub fn multipart(
    blob: RangedBlob,
    layout: Multipart,
    parts: Vec<Span>,
    delivery: Delivery,
) -> Body {
    // Where each part comes from is decided now, for all of them, against where the fill is
    // now: decided part by part as the answer goes out, every part a little ahead of the fill
    // would be left to it in turn, and the answer would wait for the fill to reach the last.
    // A part fetched on its own asks the upstream only when it is read.
    let parts = parts
        .into_iter()
        .map(|span| (span, blob.part(span.start, Some(span.end))))
        .collect();
    let body = Parts {
        layout,
        parts,
        next: 0,
        reading: None,
        closed: false,
        delivery,
    };
    let frames = stream::unfold(Some(body), |body| async move {
        let mut body = body?;
        match body.next_frame().await {
            Ok(Some(bytes)) => Some((Ok(Frame::data(bytes)), Some(body))),
            Ok(None) => None,
            Err(e) => Some((Err(aborted(e)), None)),
        }
    });
    StreamBody::new(frames).boxed_unsync()
}

/// Where a multipart body is: reading a part, or between parts.
struct Parts {
    layout: Multipart,
    /// The parts not started yet, in order.
    parts: std::collections::VecDeque<(Span, BlobBody)>,
    /// The index of the next part to start.
    next: usize,
    /// The part being sent, once its head went out.
    reading: Option<BlobBody>,
    /// Whether the closing delimiter went out.
    closed: bool,
    delivery: Delivery,
}

impl Parts {
    async fn next_frame(&mut self) -> Result<Option<Bytes>, Error> {
        if let Some(reader) = &mut self.reading {
            match self.delivery.next(reader).await? {
                Some(chunk) => return Ok(Some(chunk)),
                None => self.reading = None,
            }
        }
        match self.parts.pop_front() {
            Some((span, body)) => {
                let head = self.layout.head(self.next, span);
                self.reading = Some(body);
                self.next += 1;
                Ok(Some(head))
            }
            None if !self.closed => {
                self.closed = true;
                Ok(Some(self.layout.closing()))
            }
            None => Ok(None),
        }
    }
}
