//! Live-stream frames as they go out: plain, or deflated once for every
//! stream that asked for gzip. Compressing per stream would cost 2,000
//! compressions of the same bytes; here each frame is deflated once, on
//! its own (a fresh compressor, ended with a sync flush), so that any
//! sequence of frames after the gzip header is one valid deflate stream.
//! A live stream never ends normally, so the gzip trailer is never due.

use std::io::Write;
use std::sync::{Arc, OnceLock};

use axum::http::{HeaderMap, header};
use bytes::Bytes;
use flate2::Compression;
use flate2::write::DeflateEncoder;

/// How a stream's bytes are sent, from its request's `Accept-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
}

impl Encoding {
    /// Gzip when the client accepts it (and did not give it `q=0`).
    pub fn accepted(headers: &HeaderMap) -> Self {
        let gzip = headers
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|item| {
                let mut parts = item.split(';').map(str::trim);
                let name = parts.next().unwrap_or_default();
                let refused = parts.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                name.eq_ignore_ascii_case("gzip") && !refused
            });
        if gzip { Self::Gzip } else { Self::Identity }
    }

    /// What a stream in this encoding starts with.
    pub fn preamble(self) -> Bytes {
        match self {
            Self::Identity => Bytes::new(),
            // Deflate, no flags, no time, no extra flags, unknown system.
            Self::Gzip => Bytes::from_static(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]),
        }
    }
}

/// One frame, shared by every stream.
#[derive(Debug)]
pub struct Frame {
    plain: Bytes,
    deflated: OnceLock<Bytes>,
}

impl Frame {
    pub fn new(plain: Bytes) -> Arc<Self> {
        Arc::new(Self {
            plain,
            deflated: OnceLock::new(),
        })
    }

    /// A frame with its gzip form made ready on a blocking thread: the
    /// streams that send it at once then never wait on a compression that
    /// holds an async worker (and, through the lock, the workers of other
    /// streams of the same frame).
    pub async fn deflated(plain: Bytes) -> Arc<Self> {
        let frame = Self::new(plain);
        let ready = frame.clone();
        // Should the task fail, the first gzip stream deflates it instead.
        let _ = tokio::task::spawn_blocking(move || ready.bytes(Encoding::Gzip)).await;
        frame
    }

    /// The frame's bytes in `encoding`.
    pub fn bytes(&self, encoding: Encoding) -> Bytes {
        match encoding {
            Encoding::Identity => self.plain.clone(),
            Encoding::Gzip => self.deflated.get_or_init(|| deflate(&self.plain)).clone(),
        }
    }
}

/// `data` deflated on its own and flushed to a byte boundary, without a
/// final block: it may be followed by any other such piece.
fn deflate(data: &[u8]) -> Bytes {
    let mut encoder =
        DeflateEncoder::new(Vec::with_capacity(data.len() / 4 + 64), Compression::fast());
    // Writing to a Vec cannot fail.
    if encoder
        .write_all(data)
        .and_then(|()| encoder.flush())
        .is_err()
    {
        return Bytes::new();
    }
    // Taken before the encoder is dropped: dropping it finishes the stream
    // (a final block) into what is left, which is then thrown away.
    Bytes::from(std::mem::take(encoder.get_mut()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::io::Read;

    fn headers(accept: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            accept.parse().unwrap_or_else(|_| unreachable!()),
        );
        headers
    }

    #[test]
    fn gzip_only_when_accepted() {
        for (accept, expected) in [
            ("gzip, deflate, br, zstd", Encoding::Gzip),
            ("br;q=1.0, GZIP;q=0.5", Encoding::Gzip),
            ("gzip;q=0", Encoding::Identity),
            ("identity", Encoding::Identity),
            ("x-gzip-ish", Encoding::Identity),
        ] {
            assert_eq!(Encoding::accepted(&headers(accept)), expected, "{accept}");
        }
        assert_eq!(Encoding::accepted(&HeaderMap::new()), Encoding::Identity);
    }

    #[test]
    fn frames_deflated_apart_make_one_gzip_stream() {
        let frames = [
            Frame::new(Bytes::from_static(b"event: snapshot\ndata: {}\n\n")),
            Frame::new(Bytes::from(
                "event: comment\ndata: {\"id\":\"c\"}\n\n".repeat(500),
            )),
            Frame::new(Bytes::from_static(b":\n\n")),
        ];
        let mut stream = Encoding::Gzip.preamble().to_vec();
        let mut plain = Vec::new();
        for frame in &frames {
            stream.extend_from_slice(&frame.bytes(Encoding::Gzip));
            plain.extend_from_slice(&frame.bytes(Encoding::Identity));
        }
        assert!(
            stream.len() < plain.len() / 10,
            "{} of {}",
            stream.len(),
            plain.len()
        );
        // What a browser reads from an endless stream: everything sent so
        // far, without a trailer.
        let mut read = Vec::new();
        let mut decoder = GzDecoder::new(&stream[..]);
        let _ = decoder.read_to_end(&mut read);
        assert_eq!(read, plain);
    }
}
